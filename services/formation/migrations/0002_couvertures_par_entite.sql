-- The coverage is published one record per UAI (teachers, competences) and one per
-- (UAI, tool) (publies), no longer one record per UAI with every tool in it.
DROP TABLE couvertures;
