DROP TABLE IF EXISTS module_versions;
DROP TABLE IF EXISTS modules;
