-- The equipment profile is published one record per lot and per connectivity (publies),
-- no longer one record per UAI, which outgrew Kafka's record size at 2,000 lots.
DROP TABLE profils;
