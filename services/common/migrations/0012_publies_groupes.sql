-- The numbers of the groups of records a transaction publishes about one UAI
-- (services/common/storage/derived.py). A restore or a rebuild moves it past every group
-- Kafka holds (deploy/rattrapage.py), so numbers keep increasing across a schema's replacement.
CREATE SEQUENCE publies_groupes;
