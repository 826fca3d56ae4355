-- Re-evaluations waiting to be done in the background, chunk after chunk (handlers.Reevaluations):
-- a resource's every subscribed pair when it is published, withdrawn or changed, or every
-- subscribed pair when the thresholds changed (resource_id ''). Written in the transaction that
-- stores the cause. `after_uai` is the cursor: the pairs of UAIs up to it are done. A new
-- request for a resource whose fan-out is under way sets it back to '' (the pairs already done
-- were evaluated with the former version); the last chunk deletes the row.
CREATE TABLE reevaluations (
    resource_id text PRIMARY KEY,
    after_uai   text NOT NULL DEFAULT ''
);
