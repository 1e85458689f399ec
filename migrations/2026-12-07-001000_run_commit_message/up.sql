-- The subject of a run's commit (its message's first line, at most 500
-- characters), reported by the worker that checked the commit out, so that
-- every kind of run has it, manual triggers included. NULL until then, and for
-- runs made before this column existed.
--
-- Every statement is idempotent.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS commit_message TEXT;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = 'runs_commit_message_length') THEN
        ALTER TABLE runs ADD CONSTRAINT runs_commit_message_length
            CHECK (char_length(commit_message) <= 500);
    END IF;
END
$$;
