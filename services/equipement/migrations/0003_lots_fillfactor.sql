-- A lot declared again rewrites its row: room left free in every page keeps the new version in
-- the same page (a HOT update, no new index entry). Applies to pages written from now on.
ALTER TABLE lots SET (fillfactor = 70);
