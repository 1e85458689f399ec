-- Spaces: a tree with one root. Stacks, contexts, worker pools, VCS
-- integrations and policies belong to one space; everything that exists when
-- this migration runs lands in the root, so nobody loses access.
--
-- A grant gives a user or an API key a role in a space and in every space
-- below it. A user's own role (`users.role`) is their role in the root and so
-- everywhere; `none` confines them to the spaces they are granted. An API key
-- acts with the lower of its owner's and its own access in each space.
--
-- A space's parent never changes after creation, so the tree cannot grow a
-- cycle. Every statement is idempotent.
CREATE TABLE IF NOT EXISTS spaces (
    id          BIGSERIAL PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description TEXT NOT NULL DEFAULT '',
    parent_id   BIGINT REFERENCES spaces (id) ON DELETE RESTRICT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((id = 1) = (parent_id IS NULL))
);
CREATE INDEX IF NOT EXISTS spaces_parent_idx ON spaces (parent_id);
INSERT INTO spaces (id, slug, name, description)
VALUES (1, 'root', 'Root', 'The root of the tree; its roles hold in every space.')
ON CONFLICT (id) DO NOTHING;
SELECT setval(pg_get_serial_sequence('spaces', 'id'), GREATEST((SELECT max(id) FROM spaces), 1));

ALTER TABLE stacks ADD COLUMN IF NOT EXISTS space_id BIGINT NOT NULL DEFAULT 1 REFERENCES spaces (id);
ALTER TABLE contexts ADD COLUMN IF NOT EXISTS space_id BIGINT NOT NULL DEFAULT 1 REFERENCES spaces (id);
ALTER TABLE worker_pools ADD COLUMN IF NOT EXISTS space_id BIGINT NOT NULL DEFAULT 1 REFERENCES spaces (id);
ALTER TABLE vcs_integrations ADD COLUMN IF NOT EXISTS space_id BIGINT NOT NULL DEFAULT 1 REFERENCES spaces (id);
ALTER TABLE policies ADD COLUMN IF NOT EXISTS space_id BIGINT NOT NULL DEFAULT 1 REFERENCES spaces (id);
ALTER TABLE policies DROP COLUMN IF EXISTS space;
CREATE INDEX IF NOT EXISTS stacks_space_idx ON stacks (space_id);
CREATE INDEX IF NOT EXISTS contexts_space_idx ON contexts (space_id);
CREATE INDEX IF NOT EXISTS worker_pools_space_idx ON worker_pools (space_id);
CREATE INDEX IF NOT EXISTS vcs_integrations_space_idx ON vcs_integrations (space_id);
CREATE INDEX IF NOT EXISTS policies_space_idx ON policies (space_id);

ALTER TABLE users DROP CONSTRAINT IF EXISTS users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'writer', 'reader', 'none'));
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'writer', 'reader', 'none'));

CREATE TABLE IF NOT EXISTS space_grants (
    id          BIGSERIAL PRIMARY KEY,
    space_id    BIGINT NOT NULL REFERENCES spaces (id) ON DELETE CASCADE,
    user_id     BIGINT REFERENCES users (id) ON DELETE CASCADE,
    api_key_id  BIGINT REFERENCES api_keys (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    granted_by  TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((user_id IS NULL) <> (api_key_id IS NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS space_grants_user_key ON space_grants (space_id, user_id) WHERE user_id IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS space_grants_key_key ON space_grants (space_id, api_key_id) WHERE api_key_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS space_grants_user_idx ON space_grants (user_id);
CREATE INDEX IF NOT EXISTS space_grants_api_key_idx ON space_grants (api_key_id);
