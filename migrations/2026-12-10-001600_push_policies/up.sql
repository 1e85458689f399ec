-- Push policies: a fourth kind of policy, evaluated when a push reaches the
-- repository of a stack it applies to; `track`, `propose` or `ignore` decide
-- what the push starts. A push it ignores makes no run, so its evaluation
-- belongs to the stack instead: an evaluation has a run, a stack, or both.
--
-- Every statement is idempotent.
ALTER TABLE policies DROP CONSTRAINT IF EXISTS policies_kind_check;
ALTER TABLE policies ADD CONSTRAINT policies_kind_check CHECK (kind IN ('plan', 'approval', 'trigger', 'push'));
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_kind_check;
ALTER TABLE policy_evaluations ADD CONSTRAINT policy_evaluations_kind_check CHECK (kind IN ('plan', 'approval', 'trigger', 'push'));
ALTER TABLE policy_evaluations ADD COLUMN IF NOT EXISTS stack_id BIGINT REFERENCES stacks (id) ON DELETE CASCADE;
ALTER TABLE policy_evaluations ALTER COLUMN run_id DROP NOT NULL;
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_owner_check;
ALTER TABLE policy_evaluations ADD CONSTRAINT policy_evaluations_owner_check CHECK (run_id IS NOT NULL OR stack_id IS NOT NULL);
CREATE INDEX IF NOT EXISTS policy_evaluations_stack_idx ON policy_evaluations (stack_id, id) WHERE stack_id IS NOT NULL;
