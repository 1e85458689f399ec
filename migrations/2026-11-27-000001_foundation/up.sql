-- Foundation: people and their keys, worker pools and workers, stacks, runs with
-- their state history, and the job queue.
--
-- Every statement is idempotent (IF NOT EXISTS / OR REPLACE), so a step that was
-- applied by hand or half-applied before a crash can be applied again safely.
-- States are TEXT with CHECK constraints rather than enum types: a later step can
-- widen a CHECK inside a transaction, which ALTER TYPE ... ADD VALUE cannot do.

CREATE TABLE IF NOT EXISTS users (
    id            BIGSERIAL PRIMARY KEY,
    email         TEXT NOT NULL,
    name          TEXT NOT NULL DEFAULT '',
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL DEFAULT 'reader'
                  CHECK (role IN ('admin', 'writer', 'reader')),
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS users_email_key ON users (lower(email));

-- An API key is shown once; only its hash is kept. `prefix` is the public part a
-- caller sends first, so lookup needs no scan over hashes.
CREATE TABLE IF NOT EXISTS api_keys (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS api_keys_user_idx ON api_keys (user_id);

-- `generation` is bumped when a pool is reset: certificates issued for an older
-- generation are refused from then on.
CREATE TABLE IF NOT EXISTS worker_pools (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    generation  INTEGER NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS workers (
    id               BIGSERIAL PRIMARY KEY,
    pool_id          BIGINT NOT NULL REFERENCES worker_pools (id) ON DELETE CASCADE,
    name             TEXT NOT NULL,
    pool_generation  INTEGER NOT NULL,
    cert_serial      TEXT NOT NULL UNIQUE,
    cert_not_after   TIMESTAMPTZ NOT NULL,
    status           TEXT NOT NULL DEFAULT 'offline'
                     CHECK (status IN ('idle', 'busy', 'drained', 'offline')),
    metadata         JSONB NOT NULL DEFAULT '{}',
    registered_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at     TIMESTAMPTZ,
    revoked_at       TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS workers_pool_idx ON workers (pool_id);

CREATE TABLE IF NOT EXISTS stacks (
    id             BIGSERIAL PRIMARY KEY,
    slug           TEXT NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name           TEXT NOT NULL,
    description    TEXT NOT NULL DEFAULT '',
    repository     TEXT NOT NULL,
    branch         TEXT NOT NULL,
    project_root   TEXT NOT NULL DEFAULT '',
    tool           TEXT NOT NULL DEFAULT 'terraform'
                   CHECK (tool IN ('terraform', 'opentofu')),
    tool_version   TEXT NOT NULL,
    worker_pool_id BIGINT REFERENCES worker_pools (id) ON DELETE SET NULL,
    autodeploy     BOOLEAN NOT NULL DEFAULT FALSE,
    labels         TEXT[] NOT NULL DEFAULT '{}',
    -- Set when an apply lost its worker: state may not match reality.
    needs_reconciliation BOOLEAN NOT NULL DEFAULT FALSE,
    drift_schedule TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Run states as Spacelift names them; the allowed transitions are checked in one
-- place in code (and every transition is recorded in run_events).
CREATE TABLE IF NOT EXISTS runs (
    id               BIGSERIAL PRIMARY KEY,
    stack_id         BIGINT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('tracked', 'proposed', 'drift', 'task')),
    state            TEXT NOT NULL DEFAULT 'QUEUED' CHECK (state IN (
                        'QUEUED', 'READY', 'PREPARING', 'INITIALIZING', 'PLANNING',
                        'UNCONFIRMED', 'CONFIRMED', 'APPLYING', 'FINISHED',
                        'FAILED', 'DISCARDED', 'CANCELED', 'STOPPED')),
    commit_sha       TEXT NOT NULL,
    branch           TEXT NOT NULL,
    command          TEXT,
    triggered_by     TEXT NOT NULL,
    worker_id        BIGINT REFERENCES workers (id) ON DELETE SET NULL,
    lease_expires_at TIMESTAMPTZ,
    failure_reason   TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS runs_stack_idx ON runs (stack_id, id DESC);
CREATE INDEX IF NOT EXISTS runs_active_idx ON runs (state)
    WHERE state NOT IN ('FINISHED', 'FAILED', 'DISCARDED', 'CANCELED', 'STOPPED');

CREATE TABLE IF NOT EXISTS run_events (
    id         BIGSERIAL PRIMARY KEY,
    run_id     BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    cause      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS run_events_run_idx ON run_events (run_id, id);

-- The job queue (at-least-once). A claimed job stays 'pending' with `run_at` moved
-- to the end of its lease: if its consumer dies, the job simply becomes due again.
-- `attempts` doubles as the fencing token of the current claim.
CREATE TABLE IF NOT EXISTS jobs (
    id           BIGSERIAL PRIMARY KEY,
    queue        TEXT NOT NULL DEFAULT 'default',
    kind         TEXT NOT NULL,
    payload      JSONB NOT NULL DEFAULT '{}',
    unique_key   TEXT,
    state        TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    run_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_by    TEXT,
    locked_at    TIMESTAMPTZ,
    last_error   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS jobs_due_idx ON jobs (queue, run_at, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_dead_idx ON jobs (id) WHERE state = 'dead';

-- Uniqueness keys outlive their jobs (a webhook redelivered after its job finished
-- must still be dropped); retention cleanup removes old ones.
CREATE TABLE IF NOT EXISTS job_keys (
    queue      TEXT NOT NULL,
    unique_key TEXT NOT NULL,
    job_id     BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, unique_key)
);
CREATE INDEX IF NOT EXISTS job_keys_created_idx ON job_keys (created_at);

-- One notification per inserting statement wakes idle consumers of that queue.
CREATE OR REPLACE FUNCTION hangar_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hangar_jobs', q.queue) FROM (SELECT DISTINCT queue FROM new_jobs) q;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS jobs_notify ON jobs;
CREATE TRIGGER jobs_notify AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION hangar_jobs_notify();

-- Who did what, for every mutation made through the API.
CREATE TABLE IF NOT EXISTS audit_events (
    id         BIGSERIAL PRIMARY KEY,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL DEFAULT '',
    details    JSONB NOT NULL DEFAULT '{}',
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS audit_events_at_idx ON audit_events (at DESC);
