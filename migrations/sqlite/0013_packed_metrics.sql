-- The metric points of external runs, packed: one row per run, key and logged batch holds
-- that batch's points of the key, 24 bytes each (step, timestamp in ms, value: little-endian
-- i64, i64, f64; a NaN as its bits). Reads order a series by step, timestamp, then id and place
-- in the chunk. The rows of `external_metrics` are moved here by the server when it opens the
-- database (SQL cannot write a float's bits), which then drops that table.
CREATE TABLE external_metric_chunks (
    id     INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    points BLOB NOT NULL
);
CREATE INDEX external_metric_chunks_series ON external_metric_chunks (run_id, key, id);
