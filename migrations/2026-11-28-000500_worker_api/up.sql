-- The worker API: one-time join tokens per pool, the operator's drain flag on a
-- worker, and what a run's worker reports beyond its state (the planned changes,
-- where the plan and an errored state were stored).
--
-- Every statement is idempotent.

-- A join token (`hjt_<id>_<secret>`) is shown once; only its id (for lookup)
-- and SHA-256 (hex) are kept. Joining consumes it in one UPDATE that requires
-- `used_at IS NULL AND expires_at > now()`, so of two joins with one token
-- exactly one wins.
CREATE TABLE IF NOT EXISTS join_tokens (
    id          BIGSERIAL PRIMARY KEY,
    token_id    TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL,
    pool_id     BIGINT NOT NULL REFERENCES worker_pools (id) ON DELETE CASCADE,
    created_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL,
    used_at     TIMESTAMPTZ,
    worker_id   BIGINT REFERENCES workers (id) ON DELETE SET NULL
);
CREATE INDEX IF NOT EXISTS join_tokens_pool_idx ON join_tokens (pool_id);

-- Set by an operator: the worker finishes what it holds and claims nothing new.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS drained BOOLEAN NOT NULL DEFAULT FALSE;

-- The change summary reported when planning ends (JSON of hangar_types::worker::Changes).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS changes JSONB;
-- Object keys: the saved plan (as the worker uploaded it) and the sealed
-- `errored.tfstate` with the data key that sealed it.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS plan_key TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS errored_state_key TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS errored_state_data_key BIGINT REFERENCES data_keys (id);

-- Claims look for the oldest READY run of a pool.
CREATE INDEX IF NOT EXISTS runs_ready_idx ON runs (id) WHERE state = 'READY';
