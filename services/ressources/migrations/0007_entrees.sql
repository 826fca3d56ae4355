-- Per UAI, what the rules read of it, assembled from its `recus` once when they change rather
-- than at every reading: its profile and its coverage as JSON text (views.PROFIL_SQL and
-- COUVERTURE_SQL; NULL without a record of the kind). Assembled again (store.assemble) by the
-- transaction that writes its `recus`, once it holds the UAI's lock; read by the evaluations,
-- the read API and the simulations (one row per UAI: a national simulation no longer
-- aggregates every record).
CREATE TABLE entrees (
    uai        text PRIMARY KEY,
    profil     text,
    couverture text
);

-- A deployment from before: assembled once from what `recus` holds (the expressions of
-- views.py as they are at this migration).
INSERT INTO entrees (uai, profil, couverture)
SELECT r.uai,
    CASE WHEN bool_or(r.type = 'fr.education.plateforme.profil-lot.v1' OR r.type = 'fr.education.plateforme.profil-connectivite.v1')
    THEN json_build_object(
        'lots', coalesce(json_agg((r.content - '{uai,version}'::text[]) ORDER BY r.entity)
            FILTER (WHERE r.type = 'fr.education.plateforme.profil-lot.v1' AND (r.content->>'quantity')::bigint > 0), '[]'),
        'connectivite', (array_agg((r.content - '{uai,version}'::text[]))
            FILTER (WHERE r.type = 'fr.education.plateforme.profil-connectivite.v1'))[1]
    )::text END,
    CASE WHEN bool_or(r.type = 'fr.education.plateforme.couverture-enseignants.v1' OR r.type = 'fr.education.plateforme.couverture-outil.v1')
    THEN json_build_object(
        'enseignants', coalesce((array_agg(r.content->'enseignants')
            FILTER (WHERE r.type = 'fr.education.plateforme.couverture-enseignants.v1'))[1], '0'),
        'competences', coalesce((array_agg(r.content->'competences')
            FILTER (WHERE r.type = 'fr.education.plateforme.couverture-enseignants.v1'))[1], '{}'),
        'outils', coalesce(json_object_agg(r.content->>'kind', r.content->'enseignants' ORDER BY r.entity)
            FILTER (WHERE r.type = 'fr.education.plateforme.couverture-outil.v1' AND (r.content->>'enseignants')::bigint > 0), '{}')
    )::text END
FROM recus r
GROUP BY r.uai;
