DELETE FROM policy_evaluations WHERE kind = 'trigger';
DELETE FROM policies WHERE kind = 'trigger';
ALTER TABLE policy_evaluations DROP CONSTRAINT IF EXISTS policy_evaluations_kind_check;
ALTER TABLE policy_evaluations ADD CONSTRAINT policy_evaluations_kind_check CHECK (kind IN ('plan', 'approval'));
ALTER TABLE policies DROP CONSTRAINT IF EXISTS policies_kind_check;
ALTER TABLE policies ADD CONSTRAINT policies_kind_check CHECK (kind IN ('plan', 'approval'));
