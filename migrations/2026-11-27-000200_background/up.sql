-- Background processes: who is alive (heartbeats, for readiness checks and the
-- API) and what the scheduler last fired (so a new leader neither repeats nor
-- forgets a tick).

CREATE TABLE IF NOT EXISTS processes (
    id           TEXT PRIMARY KEY,          -- "<kind>@<host>:<pid>"
    kind         TEXT NOT NULL CHECK (kind IN ('server', 'drain', 'scheduler')),
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    leader       BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX IF NOT EXISTS processes_kind_idx ON processes (kind, last_seen_at DESC);

CREATE TABLE IF NOT EXISTS scheduler_entries (
    name          TEXT PRIMARY KEY,
    schedule      TEXT NOT NULL,
    last_fire_at  TIMESTAMPTZ,
    last_fired_by TEXT,
    fires         BIGINT NOT NULL DEFAULT 0
);
