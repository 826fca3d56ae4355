-- An affectation declared again rewrites its row: room left free in every page keeps the new
-- version in the same page (a HOT update, no new index entry, none in affectations_uai while
-- "end" is unchanged). Applies to pages written from now on.
ALTER TABLE affectations SET (fillfactor = 70);
