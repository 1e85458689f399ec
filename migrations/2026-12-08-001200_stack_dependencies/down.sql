DROP TABLE IF EXISTS stack_dependencies;
