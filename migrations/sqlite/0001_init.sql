-- Runs, their metric series, logs, per-example predictions, and registered datasets.
-- Kept to SQL that Postgres also accepts (no AUTOINCREMENT, no SQLite-only types).

CREATE TABLE datasets (
    name          TEXT PRIMARY KEY,
    format        TEXT NOT NULL,
    root          TEXT NOT NULL,
    num_labels    INTEGER NOT NULL,
    -- JSON: {"label_names": [...], "splits": {"train": {"file", "examples", "label_counts"}, ...}}
    info          TEXT NOT NULL,
    registered_at TEXT NOT NULL
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN
                  ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    model       TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    config      TEXT NOT NULL,
    priority    INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    device      TEXT,
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    error       TEXT,
    -- live progress, 0..1, updated from worker progress events
    progress    REAL,
    -- the summary of a finished run: the columns leaderboards sort and show, so that a board
    -- over many runs reads only this table, plus the whole summary as JSON
    accuracy           REAL,
    f1                 REAL,
    auroc              REAL,
    loss               REAL,
    train_seconds      REAL,
    samples_per_second REAL,
    num_parameters     INTEGER,
    summary            TEXT
);

-- the scheduler's claim: next runnable run by priority, then age
CREATE INDEX runs_queue ON runs (status, priority DESC, id);
-- leaderboards: the (dataset, model) groups of succeeded runs, read from the index alone, and
-- the best run of a group by each metric, one index search per group
CREATE INDEX runs_board ON runs (status, dataset, model);
CREATE INDEX runs_best_accuracy ON runs (dataset, model, accuracy) WHERE status = 'succeeded';
CREATE INDEX runs_best_f1 ON runs (dataset, model, f1) WHERE status = 'succeeded';
CREATE INDEX runs_best_auroc ON runs (dataset, model, auroc) WHERE status = 'succeeded';
CREATE INDEX runs_best_loss ON runs (dataset, model, loss) WHERE status = 'succeeded';
-- filtered listings
CREATE INDEX runs_dataset ON runs (dataset, id);
CREATE INDEX runs_model ON runs (model, id);

CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    step   INTEGER NOT NULL,
    epoch  REAL,
    value  REAL NOT NULL,
    time   TEXT NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

CREATE TABLE run_logs (
    id     INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    time   TEXT NOT NULL,
    -- 'worker' (the job's own log events), 'stderr' (the process's stderr), 'system'
    stream TEXT NOT NULL,
    line   TEXT NOT NULL
);
CREATE INDEX run_logs_run ON run_logs (run_id, id);

CREATE TABLE predictions (
    run_id     INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    split      TEXT NOT NULL,
    example_id TEXT NOT NULL,
    -- absent for splits published without labels
    label      INTEGER,
    pred       INTEGER NOT NULL,
    -- JSON array of per-label probabilities
    probs      TEXT NOT NULL,
    PRIMARY KEY (run_id, split, example_id)
);
