-- Skipped datums as runs (issue 11, part 2); the same as the PostgreSQL migration.
--
-- A skipped datum was a `done` row of `datums` pointing at the datum that
-- ran; inserting 100,000 of them (with their indexes) made deciding that
-- nothing must run cost 13-15 times the listing. A run of consecutive
-- skipped datums of one job is now one row here: seqs first_seq ..
-- first_seq + len - 1 of job job_id, with the datum ids first_id ..
-- first_id + len - 1 (taken from the datums id sequence, so a skipped
-- datum keeps an id no row of `datums` will ever have), pointing at the
-- datums from_first_id .. from_first_id + len - 1 of job from_job_id,
-- which ran and succeeded. The datum at offset i of the run is thus
-- (first_seq + i, first_id + i) and reuses from_first_id + i.
CREATE TABLE skipped_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    first_seq BIGINT NOT NULL,
    first_id BIGINT NOT NULL,
    len BIGINT NOT NULL CHECK (len > 0),
    from_job_id BIGINT NOT NULL,
    from_first_id BIGINT NOT NULL,
    skipped_at BIGINT NOT NULL
);
-- A job's runs in planning order, and the run holding a seq.
CREATE UNIQUE INDEX skipped_runs_job_seq ON skipped_runs (job_id, first_seq);
-- The run holding a datum id (`datum describe`), and a job's runs in id
-- order (`datum list`).
CREATE INDEX skipped_runs_first_id ON skipped_runs (first_id);
CREATE INDEX skipped_runs_job_first_id ON skipped_runs (job_id, first_id);
-- A job's runs by the datums they point at (vanished inputs).
CREATE INDEX skipped_runs_job_from ON skipped_runs (job_id, from_first_id);

-- Skipped datums stored the old way become runs of one, and their rows go.
INSERT INTO skipped_runs (job_id, first_seq, first_id, len, from_job_id, from_first_id,
    skipped_at)
SELECT job_id, seq, id, 1, skipped_from_job, skipped_from, COALESCE(finished_at, created_at)
FROM datums
WHERE skipped_from IS NOT NULL AND skipped_from_job IS NOT NULL;
DELETE FROM datums WHERE skipped_from IS NOT NULL AND skipped_from_job IS NOT NULL;
