-- Drift detection: what the last drift run of a stack found. A drift run
-- plans the stack's configuration against the real infrastructure; the
-- resources its plan would change are the drift (NULL: never checked).
-- `drift_reconcile` makes a drift found start a tracked run that puts the
-- infrastructure back (subject to autodeploy or confirmation, and policies).
--
-- Every statement is idempotent.
ALTER TABLE stacks ADD COLUMN IF NOT EXISTS drift_reconcile BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE stacks ADD COLUMN IF NOT EXISTS drift_checked_at TIMESTAMPTZ;
ALTER TABLE stacks ADD COLUMN IF NOT EXISTS drift_run_id BIGINT REFERENCES runs (id) ON DELETE SET NULL;
-- Since when the stack has been drifted (NULL when it is not).
ALTER TABLE stacks ADD COLUMN IF NOT EXISTS drift_detected_at TIMESTAMPTZ;
-- `[{"address": …, "actions": […]}]` of the last drift run; `[]` when clean.
ALTER TABLE stacks ADD COLUMN IF NOT EXISTS drifted_resources JSONB;
