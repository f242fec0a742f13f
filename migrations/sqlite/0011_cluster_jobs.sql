-- Runs handed to a cluster scheduler (Slurm): one row per attempt of a run, with the job's id,
-- what the scheduler last said of it, the hash of the token its worker reports with, and the
-- sequence number of the last event applied (events are applied once, in order).
CREATE TABLE cluster_jobs (
    run_id       INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    job_id       TEXT NOT NULL,
    token_hash   TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'PENDING',
    reason       TEXT,
    position     INTEGER,
    node         TEXT,
    exit_code    TEXT,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    -- what the worker reported at its end: {"finished": Summary} or {"failed": "..."}
    outcome      TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    submitted_at TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt)
);
