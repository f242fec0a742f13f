-- The leaderboard groups succeeded runs of the same model and configuration across seeds:
-- `config_key` is a run's options without its seed, kept by triggers from `config`, and one
-- covering index serves the grouped query without touching the table. (A virtual generated
-- column would be recomputed from `config` for every row the query reads.) The per-model
-- "best run" indexes it replaces are dropped.
ALTER TABLE runs ADD COLUMN config_key TEXT;
UPDATE runs SET config_key = json_remove(config, '$.seed');
CREATE TRIGGER runs_config_key_insert AFTER INSERT ON runs BEGIN
    UPDATE runs SET config_key = json_remove(NEW.config, '$.seed') WHERE id = NEW.id;
END;
CREATE TRIGGER runs_config_key_update AFTER UPDATE OF config ON runs BEGIN
    UPDATE runs SET config_key = json_remove(NEW.config, '$.seed') WHERE id = NEW.id;
END;
CREATE INDEX runs_groups ON runs (dataset, model, config_key, accuracy, f1, auroc, loss,
    train_seconds, samples_per_second, num_parameters, peak_memory_bytes, device_hours, id)
    WHERE status = 'succeeded';
DROP INDEX runs_best_accuracy;
DROP INDEX runs_best_f1;
DROP INDEX runs_best_auroc;
DROP INDEX runs_best_loss;
