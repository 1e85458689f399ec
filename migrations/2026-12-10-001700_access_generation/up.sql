-- A counter every change to the spaces tree or to grants moves, in the same
-- transaction. A server keeps each caller's access between requests and
-- reads this one row with the caller's token: when it moved, what it kept
-- is dropped. Servers sharing the database need nothing else to agree.
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS access_generation (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    n         BIGINT NOT NULL
);
INSERT INTO access_generation (only_row, n) VALUES (TRUE, 0) ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION bump_access_generation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE access_generation SET n = n + 1;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS spaces_access_generation ON spaces;
CREATE TRIGGER spaces_access_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON spaces
    FOR EACH STATEMENT EXECUTE FUNCTION bump_access_generation();
DROP TRIGGER IF EXISTS space_grants_access_generation ON space_grants;
CREATE TRIGGER space_grants_access_generation AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON space_grants
    FOR EACH STATEMENT EXECUTE FUNCTION bump_access_generation();
