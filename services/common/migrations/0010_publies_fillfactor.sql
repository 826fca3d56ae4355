-- Each publication rewrites its key's row (version, content). Room left free in every page lets
-- PostgreSQL write the new version in the same page (a HOT update: no new index entry), where a
-- full page moved it elsewhere and updated the primary key's index too. Applies to pages
-- written from now on.
ALTER TABLE publies SET (fillfactor = 70);
