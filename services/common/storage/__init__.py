"""PostgreSQL: the pool and migrations (db), latest-wins upserts (entities), the inbox, the référentiel's
table, derived records last published (derived), and retention."""
