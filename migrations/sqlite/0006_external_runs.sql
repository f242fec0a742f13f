-- Runs trained elsewhere and logged into modalbench, through the MLflow-compatible tracking
-- API or the native metric batch endpoint. They live in `runs` beside native runs (so run
-- lists, comparisons and leaderboards show both) with `source = 'external'`; the scheduler
-- never claims them. Their `config` is the run's parameters as a JSON object of strings.

-- MLflow experiments; id 0 is MLflow's "Default" experiment.
CREATE TABLE experiments (
    id                INTEGER PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage   TEXT NOT NULL DEFAULT 'active'
                        CHECK (lifecycle_stage IN ('active', 'deleted')),
    -- milliseconds since the Unix epoch, as MLflow reports them
    creation_time     INTEGER NOT NULL,
    last_update_time  INTEGER NOT NULL
);
INSERT INTO experiments (id, name, artifact_location, creation_time, last_update_time)
VALUES (0, 'Default', 'mlflow-artifacts:/0',
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

CREATE TABLE experiment_tags (
    experiment_id INTEGER NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    key           TEXT NOT NULL,
    value         TEXT NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

ALTER TABLE runs ADD COLUMN source TEXT NOT NULL DEFAULT 'native'
    CHECK (source IN ('native', 'external'));
ALTER TABLE runs ADD COLUMN experiment_id INTEGER REFERENCES experiments (id);
ALTER TABLE runs ADD COLUMN run_name TEXT;
ALTER TABLE runs ADD COLUMN user_id TEXT;
ALTER TABLE runs ADD COLUMN lifecycle_stage TEXT NOT NULL DEFAULT 'active'
    CHECK (lifecycle_stage IN ('active', 'deleted'));
CREATE INDEX runs_experiment ON runs (experiment_id, id) WHERE experiment_id IS NOT NULL;

CREATE TABLE run_tags (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- The metric points of external runs, as MLflow keeps them: any key, the client's timestamp
-- (ms) and step, several values at one step allowed. `value` NULL is NaN (SQLite stores no
-- NaN).
CREATE TABLE external_metrics (
    id        INTEGER PRIMARY KEY,
    run_id    INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     REAL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL
);
CREATE INDEX external_metrics_series ON external_metrics (run_id, key, step, timestamp, id);

-- A run deleted through the MLflow API (soft deletion, restorable) leaves the leaderboard:
-- the covering index of its groups now also requires `lifecycle_stage = 'active'`.
DROP INDEX runs_groups;
CREATE INDEX runs_groups ON runs (dataset, model, config_key, accuracy, f1, auroc, loss,
    train_seconds, samples_per_second, num_parameters, peak_memory_bytes, device_hours, id)
    WHERE status = 'succeeded' AND lifecycle_stage = 'active';

-- The latest point of each metric of an external run (highest step, then latest timestamp),
-- as MLflow reports a run's metrics; kept by the writes, one row per (run, key).
CREATE TABLE external_latest (
    run_id    INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    value     REAL,
    timestamp INTEGER NOT NULL,
    step      INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
