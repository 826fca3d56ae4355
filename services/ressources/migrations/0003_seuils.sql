-- The thresholds the held alerts were evaluated with: when the deployment changes them, the
-- service re-evaluates every pair at start, so alerts follow the new settings.
CREATE TABLE seuils (
    id                    int              PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    min_compatible_share  double precision NOT NULL,
    min_training_coverage double precision NOT NULL
);
