-- Run-scoped credentials. A claimed run gets a token (`hrt_<id>_<secret>`) that the
-- worker gives Terraform for the state backend and uses for the run's own calls.
-- Only its id (for lookup) and SHA-256 (hex) are kept; it stops working the
-- moment the run reaches a terminal state, because every check reads the run's
-- state with the token.
--
-- Every statement is idempotent.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS run_token_id TEXT;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS run_token_hash TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS runs_run_token_idx ON runs (run_token_id)
    WHERE run_token_id IS NOT NULL;
