-- Evaluations of pushes that made no run have no run to keep them; push
-- policies go with their kind.
DELETE FROM policy_evaluations WHERE run_id IS NULL;
DELETE FROM policy_evaluations WHERE kind = 'push';
DELETE FROM policies WHERE kind = 'push';
DROP INDEX IF EXISTS policy_evaluations_stack_idx;
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_owner_check;
ALTER TABLE policy_evaluations ALTER COLUMN run_id SET NOT NULL;
ALTER TABLE policy_evaluations DROP COLUMN IF EXISTS stack_id;
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_kind_check;
ALTER TABLE policy_evaluations ADD CONSTRAINT policy_evaluations_kind_check CHECK (kind IN ('plan', 'approval', 'trigger'));
ALTER TABLE policies DROP CONSTRAINT IF EXISTS policies_kind_check;
ALTER TABLE policies ADD CONSTRAINT policies_kind_check CHECK (kind IN ('plan', 'approval', 'trigger'));
