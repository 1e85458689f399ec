DROP TABLE IF EXISTS space_grants;
-- Without spaces a confined user would see everything: disable them instead.
UPDATE users SET role = 'reader', disabled = TRUE WHERE role = 'none';
UPDATE api_keys SET role = 'reader', revoked_at = COALESCE(revoked_at, now()) WHERE role = 'none';
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_role_check;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'writer', 'reader'));
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_role_check;
ALTER TABLE users ADD CONSTRAINT users_role_check CHECK (role IN ('admin', 'writer', 'reader'));
ALTER TABLE policies ADD COLUMN IF NOT EXISTS space TEXT;
ALTER TABLE policies DROP COLUMN IF EXISTS space_id;
ALTER TABLE vcs_integrations DROP COLUMN IF EXISTS space_id;
ALTER TABLE worker_pools DROP COLUMN IF EXISTS space_id;
ALTER TABLE contexts DROP COLUMN IF EXISTS space_id;
ALTER TABLE stacks DROP COLUMN IF EXISTS space_id;
DROP TABLE IF EXISTS spaces;
