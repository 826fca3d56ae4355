-- Each record's group (contracts/internal.py: the records one transaction of equipement or
-- formation published about the UAI, and how many): a UAI's profile or coverage is assembled
-- again (`entrees`, views.ENTREES_SQL) only once its latest group is all here. NULL for a record
-- published before groups existed: whole alone.
ALTER TABLE recus ADD COLUMN group_no bigint, ADD COLUMN group_size int;
