-- Studies: runs queued together over models x datasets x seeds x a grid of options. `spec` is
-- the request as JSON; a run's `study_id` names its study and `grid` the grid's values of its
-- cell (JSON object), NULL for runs outside studies.
CREATE TABLE studies (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    cancelled_at TEXT
);
ALTER TABLE runs ADD COLUMN study_id INTEGER REFERENCES studies(id);
ALTER TABLE runs ADD COLUMN grid TEXT;
CREATE INDEX runs_study ON runs (study_id, id);
