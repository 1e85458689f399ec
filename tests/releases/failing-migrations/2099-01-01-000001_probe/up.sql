-- A migration of the test release that succeeds and is committed: it changes
-- the schema and the data, so that only the database's backup can undo it
-- when the upgrade rolls back.
ALTER TABLE users ADD COLUMN IF NOT EXISTS upgrade_probe TEXT NOT NULL DEFAULT 'migrated';
UPDATE users SET name = 'changed by the failing release';
