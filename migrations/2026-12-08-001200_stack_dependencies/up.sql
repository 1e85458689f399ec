-- Stack dependencies: `stack_id` depends on `depends_on_id`. The edges form
-- a DAG (the API refuses an edge that would close a cycle, under a lock that
-- serializes every change of the graph). A finished tracked run of a stack
-- starts its dependents' runs; `outputs` passes outputs of the dependency's
-- latest state to the dependent's runs as `TF_VAR_<input>`:
-- `[{"output": "subnet_id", "input": "subnet"}]`.
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS stack_dependencies (
    stack_id      BIGINT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    depends_on_id BIGINT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    outputs       JSONB NOT NULL DEFAULT '[]',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (stack_id, depends_on_id),
    CHECK (stack_id <> depends_on_id)
);
CREATE INDEX IF NOT EXISTS stack_dependencies_depends_on ON stack_dependencies (depends_on_id);
