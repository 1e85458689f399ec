-- Run logs. A worker sends each phase's output as numbered chunks; the bytes
-- live in the object store under `runs/{run}/logs/{phase}/{seq:08}` and this
-- table says which chunks exist, how big they are and what they hash to.
--
-- The primary key makes a retried chunk harmless: the second INSERT finds the
-- first row, and the SHA-256 tells a true retry (same bytes) from a conflict.
-- `stored` turns true only once the object is written, so readers never list a
-- chunk whose bytes are not there yet.
--
-- Rows go with their run (a stack's deletion cascades to its runs); whoever
-- deletes runs deletes the objects under `runs/{run}/logs/` too.
--
-- Every statement is idempotent.
CREATE TABLE IF NOT EXISTS run_log_chunks (
    run_id      BIGINT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    phase       TEXT NOT NULL CHECK (phase IN ('preparing', 'initializing', 'planning', 'applying')),
    seq         BIGINT NOT NULL CHECK (seq >= 0),
    size        INTEGER NOT NULL CHECK (size >= 0),
    sha256      TEXT NOT NULL,
    stored      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, phase, seq)
);
