-- The migration that fails on purpose.
DO $$ BEGIN RAISE EXCEPTION 'a deliberately failing migration of the test release'; END $$;
