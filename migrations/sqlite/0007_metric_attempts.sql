-- A run's metric points keep the attempt that reported them: a run resumed after a crash or
-- a restart reports the steps after its checkpoint again, and the earlier attempt's points
-- stay as its history instead of being deleted. Series read the latest attempt's point of
-- each step.
CREATE TABLE metrics_by_attempt (
    run_id  INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key     TEXT NOT NULL,
    step    INTEGER NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    epoch   REAL,
    value   REAL NOT NULL,
    time    TEXT NOT NULL,
    PRIMARY KEY (run_id, key, step, attempt)
);
INSERT INTO metrics_by_attempt (run_id, key, step, attempt, epoch, value, time)
    SELECT run_id, key, step, 1, epoch, value, time FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_by_attempt RENAME TO metrics;
