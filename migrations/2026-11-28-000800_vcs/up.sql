-- VCS integrations: the git servers whose webhooks the server accepts and to
-- which the drain reports commit statuses (or which it polls, for plain git);
-- stacks linked to one; the log of deliveries with what each led to; and the
-- runs that came from a git server, so their statuses find their way back.
--
-- Every statement is idempotent.

CREATE TABLE IF NOT EXISTS vcs_integrations (
    id                 BIGSERIAL PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    kind               TEXT NOT NULL CHECK (kind IN ('github', 'gitlab', 'gitea', 'bitbucket', 'git')),
    -- The git server's web address (API calls), or for plain git unused.
    base_url           TEXT NOT NULL,
    -- The user name that goes with the token for git over HTTPS (Basic auth).
    username           TEXT,
    -- API token and webhook secret, each sealed with a data key; never read back
    -- through the API.
    token_sealed       BYTEA,
    token_key_id       BIGINT REFERENCES data_keys (id),
    secret_sealed      BYTEA,
    secret_key_id      BIGINT REFERENCES data_keys (id),
    -- PEM certificates to trust for this git server (its own CA), when not the
    -- system's roots.
    ca_pem             TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((token_sealed IS NULL) = (token_key_id IS NULL)),
    CHECK ((secret_sealed IS NULL) = (secret_key_id IS NULL))
);

ALTER TABLE stacks ADD COLUMN IF NOT EXISTS vcs_integration_id BIGINT
    REFERENCES vcs_integrations (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS stacks_vcs_integration_idx ON stacks (vcs_integration_id)
    WHERE vcs_integration_id IS NOT NULL;

-- One row per accepted delivery; a redelivery of the same id changes nothing.
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id             BIGSERIAL PRIMARY KEY,
    integration_id BIGINT NOT NULL REFERENCES vcs_integrations (id) ON DELETE CASCADE,
    delivery_id    TEXT NOT NULL,
    event          TEXT NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at   TIMESTAMPTZ,
    -- queued, runs_created, ignored, failed
    outcome        TEXT NOT NULL DEFAULT 'queued'
                   CHECK (outcome IN ('queued', 'runs_created', 'ignored', 'failed')),
    -- One line per event in the delivery: what was done with it, and why.
    detail         TEXT,
    run_ids        BIGINT[] NOT NULL DEFAULT '{}',
    error          TEXT,
    UNIQUE (integration_id, delivery_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_recent_idx ON webhook_deliveries (integration_id, id DESC);

-- Runs created from a git server's events: where to report their statuses, and
-- which pull request a proposed run plans (a newer push to it cancels it).
CREATE TABLE IF NOT EXISTS vcs_runs (
    run_id         BIGINT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    integration_id BIGINT NOT NULL REFERENCES vcs_integrations (id) ON DELETE CASCADE,
    -- `owner/name` (GitLab: the namespace path) as the vendor names it.
    repository     TEXT NOT NULL,
    pull_request   BIGINT,
    -- The commit state last reported, so a status is sent only when it moves.
    reported       TEXT
);
CREATE INDEX IF NOT EXISTS vcs_runs_pull_request_idx ON vcs_runs (integration_id, repository, pull_request)
    WHERE pull_request IS NOT NULL;

-- What the last poll of a plain-git repository saw (a RemoteRefs as JSON).
CREATE TABLE IF NOT EXISTS vcs_poll_heads (
    integration_id BIGINT NOT NULL REFERENCES vcs_integrations (id) ON DELETE CASCADE,
    repository     TEXT NOT NULL,
    refs           JSONB NOT NULL,
    polled_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (integration_id, repository)
);

-- Every state change of a run that came from a git server enqueues a
-- `vcs.status` job in the transition's own transaction: the report survives a
-- crash of anything, and the run never waits for the git server.
CREATE OR REPLACE FUNCTION hangar_vcs_status_job() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state IS DISTINCT FROM OLD.state
       AND EXISTS (SELECT 1 FROM vcs_runs WHERE run_id = NEW.id) THEN
        INSERT INTO jobs (kind, payload, max_attempts)
        VALUES ('vcs.status', json_build_object('run', NEW.id)::jsonb, 8);
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS runs_vcs_status ON runs;
CREATE TRIGGER runs_vcs_status AFTER UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION hangar_vcs_status_job();
