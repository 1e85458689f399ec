ALTER TABLE stacks DROP COLUMN IF EXISTS drifted_resources;
ALTER TABLE stacks DROP COLUMN IF EXISTS drift_detected_at;
ALTER TABLE stacks DROP COLUMN IF EXISTS drift_run_id;
ALTER TABLE stacks DROP COLUMN IF EXISTS drift_checked_at;
ALTER TABLE stacks DROP COLUMN IF EXISTS drift_reconcile;
