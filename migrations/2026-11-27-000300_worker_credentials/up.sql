-- Worker credentials for the built-in MQTT broker, and announcements of the
-- worker changes that must end a connection.
--
-- Every statement is idempotent (IF NOT EXISTS / OR REPLACE / DROP ... IF EXISTS).

-- A worker's token (`hwt_<id>_<secret>`) is shown to it once; only its SHA-256
-- (hex) is kept. NULL until the worker has been given one: such a worker cannot
-- log in to the broker.
ALTER TABLE workers ADD COLUMN IF NOT EXISTS token_hash TEXT;

-- The broker admits a worker on its record; when the record changes in a way
-- that withdraws the admission (revoked, token or certificate replaced, moved,
-- deleted) or its pool is reset, the broker is told at once on `hangar_workers`
-- and ends the connection. Payload: {"worker": <id>} or {"pool": <id>}.
CREATE OR REPLACE FUNCTION hangar_workers_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'worker_pools' THEN
        PERFORM pg_notify('hangar_workers', json_build_object('pool', OLD.id)::text);
    ELSE
        PERFORM pg_notify('hangar_workers', json_build_object('worker', OLD.id)::text);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS workers_credentials_notify ON workers;
CREATE TRIGGER workers_credentials_notify
    AFTER UPDATE OF revoked_at, token_hash, cert_serial, pool_id, pool_generation ON workers
    FOR EACH ROW
    WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
       OR OLD.token_hash IS DISTINCT FROM NEW.token_hash
       OR OLD.cert_serial IS DISTINCT FROM NEW.cert_serial
       OR OLD.pool_id IS DISTINCT FROM NEW.pool_id
       OR OLD.pool_generation IS DISTINCT FROM NEW.pool_generation)
    EXECUTE FUNCTION hangar_workers_notify();

DROP TRIGGER IF EXISTS workers_deleted_notify ON workers;
CREATE TRIGGER workers_deleted_notify
    AFTER DELETE ON workers
    FOR EACH ROW EXECUTE FUNCTION hangar_workers_notify();

DROP TRIGGER IF EXISTS worker_pools_reset_notify ON worker_pools;
CREATE TRIGGER worker_pools_reset_notify
    AFTER UPDATE OF generation ON worker_pools
    FOR EACH ROW
    WHEN (OLD.generation IS DISTINCT FROM NEW.generation)
    EXECUTE FUNCTION hangar_workers_notify();
