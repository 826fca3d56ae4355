-- An open alert whose content changes (its reasons, its counts: every re-evaluation that moves
-- them, a republication with stricter requirements rewriting thousands at once) is written
-- again. Its row then kept no index untouched: three indexes read its JSON content, so every
-- new version had its eight index entries written again. Now the filter values are columns of
-- their own, computed from the content (they change only when the établissement moves), and the
-- table's pages keep half their room free: the new version goes in its page, no index touched
-- (a HOT update). Measured on 30,000 held alerts whose reasons change, chunks of 470, 3 rounds
-- alternated in one run (PostgreSQL 18): 0.86 s instead of 1.7 s, a third less WAL; a table
-- half as full takes about 30% more room. The rewrite below (the new columns are stored) holds
-- the table alone while it runs, once.
ALTER TABLE alertes SET (fillfactor = 50);
ALTER TABLE alertes
    ADD COLUMN code_academie    text GENERATED ALWAYS AS (alerte->>'code_academie') STORED,
    ADD COLUMN code_departement text GENERATED ALWAYS AS (alerte->>'code_departement') STORED,
    ADD COLUMN responsable_type text GENERATED ALWAYS AS (alerte->'responsable'->>'type') STORED,
    ADD COLUMN responsable_code text GENERATED ALWAYS AS (alerte->'responsable'->>'code') STORED;
DROP INDEX alertes_academie, alertes_departement, alertes_responsable;
CREATE INDEX alertes_academie ON alertes (code_academie, ouverte);
CREATE INDEX alertes_departement ON alertes (code_departement, ouverte);
CREATE INDEX alertes_responsable ON alertes (responsable_type, responsable_code);
