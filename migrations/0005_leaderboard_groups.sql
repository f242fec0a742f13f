-- The leaderboard groups succeeded runs of the same model and configuration across seeds:
-- `config_key` is a run's options without its seed (a virtual column, computed from `config`),
-- and one covering index serves the grouped query without touching the table. The per-model
-- "best run" indexes it replaces are dropped.
ALTER TABLE runs ADD COLUMN config_key TEXT GENERATED ALWAYS AS (json_remove(config, '$.seed')) VIRTUAL;
CREATE INDEX runs_groups ON runs (dataset, model, config_key, accuracy, f1, auroc, loss,
    train_seconds, samples_per_second, num_parameters, peak_memory_bytes, device_hours, id)
    WHERE status = 'succeeded';
DROP INDEX runs_best_accuracy;
DROP INDEX runs_best_f1;
DROP INDEX runs_best_auroc;
DROP INDEX runs_best_loss;
