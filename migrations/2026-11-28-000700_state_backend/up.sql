-- Terraform's HTTP state backend (`/state/v1/{stack}`).
--
-- Every accepted write is a new row in `state_versions`; the state itself is in
-- the object store, sealed with a data key (state files hold secrets), so a row
-- names its object and the data key that sealed it. Versions are never updated
-- or deleted by the backend, and a stack that has state cannot be deleted
-- (the reference below has no cascade), so no state is ever lost silently.
--
-- `state_locks` holds at most one lock per stack: the primary key is what makes
-- one INSERT ... ON CONFLICT DO NOTHING the single arbiter between concurrent
-- LOCK requests. `info` is Terraform's LockInfo JSON as its client sent it, and
-- is returned verbatim to whoever finds the state locked.
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS state_versions (
    id           BIGSERIAL PRIMARY KEY,
    stack_id     BIGINT NOT NULL REFERENCES stacks (id),
    serial       BIGINT NOT NULL CHECK (serial >= 0),
    lineage      TEXT NOT NULL,
    -- Hex MD5 of the plaintext state, as Terraform's Content-MD5 checks it.
    md5          TEXT NOT NULL,
    size         BIGINT NOT NULL CHECK (size >= 0),
    object_key   TEXT NOT NULL UNIQUE,
    data_key_id  BIGINT NOT NULL REFERENCES data_keys (id),
    run_id       BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    user_id      BIGINT REFERENCES users (id) ON DELETE SET NULL,
    -- Who wrote it, as shown in the API ("run 12", "alice@example.com (API key ci)").
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS state_versions_stack_idx ON state_versions (stack_id, id DESC);

CREATE TABLE IF NOT EXISTS state_locks (
    stack_id    BIGINT PRIMARY KEY REFERENCES stacks (id) ON DELETE CASCADE,
    lock_id     TEXT NOT NULL,
    info        TEXT NOT NULL,
    run_id      BIGINT REFERENCES runs (id) ON DELETE SET NULL,
    user_id     BIGINT REFERENCES users (id) ON DELETE SET NULL,
    held_by     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
