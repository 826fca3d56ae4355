-- What the dashboards' read API filters and counts on.
CREATE INDEX alertes_academie ON alertes ((alerte->>'code_academie'), ouverte);
CREATE INDEX alertes_departement ON alertes ((alerte->>'code_departement'), ouverte);
CREATE INDEX alertes_responsable ON alertes ((alerte->'responsable'->>'type'), (alerte->'responsable'->>'code'));
CREATE INDEX alertes_raised ON alertes (raised_at DESC, alert_id);
CREATE INDEX abonnements_resource ON abonnements (resource_id) WHERE "end" IS NULL;
