-- Policies in Rego (plan and approval), their versions, how they attach to
-- stacks, every evaluation with its input, and the reviews of runs.
--
-- A policy is a name and a kind; its body lives in `policy_versions`, one row
-- per save, never updated, so an evaluation names the exact version it ran.
-- A policy attaches to a stack by hand (`stack_policies`) or by label: a
-- policy labelled `autoattach:<label>` applies to every stack carrying
-- `<label>` (`autoattach:*` to every stack).
--
-- Spaces are to own policies as they own stacks: `space` is the place they
-- will take; until spaces exist it is NULL for every policy.
--
-- An evaluation's input holds the plan, which holds variable values (secret
-- ones included): it is sealed with a data key, like state, and kept only up
-- to a size (`input_sealed` is NULL beyond it, `input_bytes` says how big it
-- was).
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS policies (
    id               BIGSERIAL PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    kind             TEXT NOT NULL CHECK (kind IN ('plan', 'approval')),
    description      TEXT NOT NULL DEFAULT '',
    labels           TEXT[] NOT NULL DEFAULT '{}',
    space            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS policy_versions (
    id           BIGSERIAL PRIMARY KEY,
    policy_id    BIGINT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    version      INT NOT NULL CHECK (version >= 1),
    body         TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (policy_id, version)
);

CREATE TABLE IF NOT EXISTS stack_policies (
    stack_id     BIGINT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    policy_id    BIGINT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stack_id, policy_id)
);

CREATE TABLE IF NOT EXISTS policy_evaluations (
    id                 BIGSERIAL PRIMARY KEY,
    run_id             BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    policy_id          BIGINT REFERENCES policies (id) ON DELETE SET NULL,
    policy_version_id  BIGINT REFERENCES policy_versions (id) ON DELETE SET NULL,
    -- Kept as evaluated, so a deleted policy's decisions still read.
    policy_name        TEXT NOT NULL,
    policy_version     INT NOT NULL,
    kind               TEXT NOT NULL CHECK (kind IN ('plan', 'approval')),
    -- pass, warn, deny, approve, reject, undecided, or error (see `error`).
    result             TEXT NOT NULL,
    -- [{"level": "deny"|"warn", "text": "..."}]
    messages           JSONB NOT NULL DEFAULT '[]',
    error              TEXT,
    duration_us        BIGINT NOT NULL CHECK (duration_us >= 0),
    input_bytes        BIGINT NOT NULL CHECK (input_bytes >= 0),
    input_sealed       BYTEA,
    input_data_key     BIGINT REFERENCES data_keys (id),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS policy_evaluations_run_idx ON policy_evaluations (run_id, id);
CREATE INDEX IF NOT EXISTS policy_evaluations_kind_idx ON policy_evaluations (kind, id DESC);

-- The latest review of each reviewer counts: one row per (run, user).
CREATE TABLE IF NOT EXISTS run_reviews (
    id           BIGSERIAL PRIMARY KEY,
    run_id       BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    reviewer     TEXT NOT NULL,
    role         TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approve', 'reject')),
    note         TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (run_id, user_id)
);

-- The plan as `terraform show -json` printed it, sealed in the object store.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS plan_json_key TEXT;
