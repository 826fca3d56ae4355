-- An école of Paris, Marseille or Lyon is equipped by its commune (75056, 13055, 69123), not by
-- the arrondissement municipal the annuaire gives as its `code_commune` (audit s72 F2): the
-- alerts held there name the arrondissement as `responsable`. Every subscribed pair is
-- evaluated again, in the background, as 0015 requested (one part of every pair; nothing
-- where nothing is subscribed yet): those alerts are updated, the others stay as they are.
INSERT INTO reevaluations (resource_id, part, after_uai, up_to)
SELECT '', coalesce((SELECT max(part) + 1 FROM reevaluations WHERE resource_id = ''), 0), '', NULL
WHERE EXISTS (SELECT FROM abonnements);
