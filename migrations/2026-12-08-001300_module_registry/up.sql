-- The private module registry: modules (`namespace/name/system`, as
-- Terraform's registry protocol names them) and their published versions.
--
-- A version is the tree of one commit of a git repository, published from a
-- tag: the archive (`.tar.gz`) lies in the object store under `object_key`,
-- with its SHA-256 and size, checked again on every download. A version is
-- never rewritten: publishing it again with other content is refused.
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS modules (
    id          BIGSERIAL PRIMARY KEY,
    namespace   TEXT NOT NULL CHECK (length(namespace) BETWEEN 1 AND 64),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    system      TEXT NOT NULL CHECK (length(system) BETWEEN 1 AND 64),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (namespace, name, system)
);

CREATE TABLE IF NOT EXISTS module_versions (
    id            BIGSERIAL PRIMARY KEY,
    module_id     BIGINT NOT NULL REFERENCES modules (id) ON DELETE CASCADE,
    version       TEXT NOT NULL CHECK (length(version) BETWEEN 1 AND 128),
    repository    TEXT NOT NULL,
    tag           TEXT NOT NULL,
    commit_sha    TEXT NOT NULL CHECK (commit_sha ~ '^[0-9a-f]{40}([0-9a-f]{24})?$'),
    -- The commit's tree: what "the same content" means when a tag is published again.
    tree_sha      TEXT NOT NULL CHECK (tree_sha ~ '^[0-9a-f]{40}([0-9a-f]{24})?$'),
    object_key    TEXT NOT NULL UNIQUE,
    sha256        TEXT NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    size          BIGINT NOT NULL CHECK (size >= 0),
    published_by  TEXT NOT NULL,
    published_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (module_id, version)
);

CREATE INDEX IF NOT EXISTS module_versions_module ON module_versions (module_id);
