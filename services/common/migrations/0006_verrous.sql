-- One row per key a transaction may need to hold alone (a UAI, a teacher): replicas of a
-- service lock the rows of the keys they derive state for (services/common/storage/locks.py),
-- so transactions on different keys never wait for each other. Row locks, unlike advisory
-- locks, take no room in the server's shared lock table, whatever the number of keys.
CREATE TABLE verrous (
    cle text PRIMARY KEY
);
