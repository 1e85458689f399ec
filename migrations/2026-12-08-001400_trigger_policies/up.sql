-- Trigger policies: a third kind of policy, evaluated when a tracked run of
-- a stack it applies to ends; its `trigger` names the stacks whose tracked
-- runs start. The kind checks of policies and of their evaluations widen.
--
-- Every statement is idempotent.
ALTER TABLE policies DROP CONSTRAINT IF EXISTS policies_kind_check;
ALTER TABLE policies ADD CONSTRAINT policies_kind_check CHECK (kind IN ('plan', 'approval', 'trigger'));
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_kind_check;
ALTER TABLE policy_evaluations ADD CONSTRAINT policy_evaluations_kind_check CHECK (kind IN ('plan', 'approval', 'trigger'));
