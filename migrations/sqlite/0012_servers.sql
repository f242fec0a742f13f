-- Server processes sharing the database, each with a heartbeat, and the server that claimed
-- each running run (`runs.owner`): a server takes over only the runs of servers whose
-- heartbeat stopped. A cancel asked of another server's running run waits in
-- `cancel_requested` until its owner stops the worker.
CREATE TABLE servers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
ALTER TABLE runs ADD COLUMN owner TEXT;
ALTER TABLE runs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
