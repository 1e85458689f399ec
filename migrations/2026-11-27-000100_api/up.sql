-- The API: login sessions, shared contexts and their attachments to stacks,
-- environment variables (plain or sealed), and the data keys that seal secrets.
--
-- Every statement is idempotent (IF NOT EXISTS / OR REPLACE).

-- A session token is shown once at login; only its SHA-256 is kept. `token_id`
-- is the token's public part, so lookup needs no scan over hashes.
CREATE TABLE IF NOT EXISTS sessions (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id     TEXT NOT NULL UNIQUE,
    token_hash   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ NOT NULL,
    last_seen_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX IF NOT EXISTS sessions_user_idx ON sessions (user_id);
CREATE INDEX IF NOT EXISTS sessions_expires_idx ON sessions (expires_at);

-- Variables shared by several stacks.
CREATE TABLE IF NOT EXISTS contexts (
    id          BIGSERIAL PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A context attached to a stack. When two attached contexts define the same
-- variable, the lower priority number wins; the stack's own variables win over
-- every context.
CREATE TABLE IF NOT EXISTS context_attachments (
    stack_id   BIGINT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    context_id BIGINT NOT NULL REFERENCES contexts (id) ON DELETE CASCADE,
    priority   INTEGER NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stack_id, context_id)
);
CREATE INDEX IF NOT EXISTS context_attachments_context_idx ON context_attachments (context_id);

-- Data keys seal secret values (AES-256-GCM); each is stored wrapped by the
-- master key named by `master_key_id`. Rotating the master key rewrites these
-- rows only, in one transaction.
CREATE TABLE IF NOT EXISTS data_keys (
    id            BIGSERIAL PRIMARY KEY,
    wrapped       BYTEA NOT NULL,
    master_key_id TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    rewrapped_at  TIMESTAMPTZ
);

-- Environment variables of a stack or of a context (exactly one owner). A plain
-- variable keeps its value; a secret one keeps only its sealed form, opened with
-- the variable's owner and name as associated data.
CREATE TABLE IF NOT EXISTS variables (
    id          BIGSERIAL PRIMARY KEY,
    stack_id    BIGINT REFERENCES stacks (id) ON DELETE CASCADE,
    context_id  BIGINT REFERENCES contexts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_]{0,127}$'),
    secret      BOOLEAN NOT NULL DEFAULT FALSE,
    value       TEXT,
    sealed      BYTEA,
    data_key_id BIGINT REFERENCES data_keys (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT variables_one_owner CHECK ((stack_id IS NULL) <> (context_id IS NULL)),
    CONSTRAINT variables_secret_sealed CHECK (
        (secret AND value IS NULL AND sealed IS NOT NULL AND data_key_id IS NOT NULL)
        OR (NOT secret AND value IS NOT NULL AND sealed IS NULL AND data_key_id IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS variables_stack_name_key ON variables (stack_id, name) WHERE stack_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS variables_context_name_key ON variables (context_id, name) WHERE context_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS audit_events_action_idx ON audit_events (action, id DESC);
