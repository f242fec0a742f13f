-- A counter that every change of a run the leaderboard reads moves on: the leaderboard's
-- cache (`store::runs`) serves a computed board while the counter still reads as it did
-- when the board was computed. Triggers keep it, so every writer (this process, another
-- server on the same database, a manual edit) invalidates the cache.
CREATE TABLE board_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL
);
INSERT INTO board_generation (id, generation) VALUES (1, 0);
CREATE TRIGGER runs_board_insert AFTER INSERT ON runs BEGIN
    UPDATE board_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER runs_board_delete AFTER DELETE ON runs BEGIN
    UPDATE board_generation SET generation = generation + 1 WHERE id = 1;
END;
CREATE TRIGGER runs_board_update AFTER UPDATE OF status, lifecycle_stage, dataset, model,
    config, config_key, accuracy, f1, auroc, loss, train_seconds, samples_per_second,
    num_parameters, peak_memory_bytes, device_hours, source ON runs BEGIN
    UPDATE board_generation SET generation = generation + 1 WHERE id = 1;
END;
