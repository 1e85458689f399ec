DROP TRIGGER IF EXISTS space_grants_access_generation ON space_grants;
DROP TRIGGER IF EXISTS spaces_access_generation ON spaces;
DROP FUNCTION IF EXISTS bump_access_generation();
DROP TABLE IF EXISTS access_generation;
