-- Names and kinds are compared as CONTRACTS.md says from this version on: case-insensitively
-- after the synonyms, spaces counting (they were collapsed and trimmed: ` Windows ` met a
-- requirement on Windows, `TNI ` counted as a TNI). The alerts held were judged by the former
-- rule: every subscribed pair is evaluated again, in the background, as a change of the
-- thresholds does (one part of every pair; nothing where nothing is subscribed yet).
INSERT INTO reevaluations (resource_id, part, after_uai, up_to)
SELECT '', coalesce((SELECT max(part) + 1 FROM reevaluations WHERE resource_id = ''), 0), '', NULL
WHERE EXISTS (SELECT FROM abonnements);
