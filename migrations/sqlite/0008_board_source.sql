-- Leaderboard rows say whether their runs were logged from elsewhere (external) or trained
-- here: the covering index of the groups carries `source` too.
DROP INDEX runs_groups;
CREATE INDEX runs_groups ON runs (dataset, model, config_key, accuracy, f1, auroc, loss,
    train_seconds, samples_per_second, num_parameters, peak_memory_bytes, device_hours, source,
    id)
    WHERE status = 'succeeded' AND lifecycle_stage = 'active';
