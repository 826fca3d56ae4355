-- The dashboards' list of resolved alerts, the latest resolution first: sorted by their raise,
-- one raised months ago and resolved a minute ago was pages down the list, where someone
-- checking what was just fixed never looked. Its pages and its count read through this index,
-- as the open alerts' through alertes_ouvertes. A plain CREATE INDEX: writes to alertes wait
-- while it builds (seconds at 900,000 alerts), at the upgrade's start.
CREATE INDEX alertes_resolues ON alertes (resolved_at DESC, alert_id) WHERE NOT ouverte;
