-- Incremental runs (issue 11, part 2).
--
-- jobs.incremental: the job skips datums that an earlier job of its pipeline
-- already computed. jobs.skipped_count: how many it skipped; skipped datums
-- never change again, so the count is final once planning ends, and `job
-- describe` and /metrics report it without a scan. jobs.previous_job_id and
-- jobs.vanished_count: the earlier run an incremental job was compared with,
-- and how many of its successful datums have no datum with the same inputs
-- in this job (their outputs are left in place), counted once planning ends.
ALTER TABLE jobs ADD COLUMN incremental BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN skipped_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN previous_job_id BIGINT;
ALTER TABLE jobs ADD COLUMN vanished_count BIGINT;
CREATE INDEX jobs_pipeline ON jobs (pipeline_name, id);

-- datums.fingerprint and datums.input_key: SHA-256 hex of what the datum's
-- result depends on, and of which files it has (see fingerprint.rs); NULL
-- for datums planned before this migration. A skipped datum is stored as
-- `done` with skipped_from (the datum that ran, in job skipped_from_job)
-- set: the status CHECK stays as it is (SQLite could only change it by
-- rebuilding the table), and the API reports such a datum as `skipped`.
ALTER TABLE datums ADD COLUMN fingerprint TEXT;
ALTER TABLE datums ADD COLUMN input_key TEXT;
ALTER TABLE datums ADD COLUMN skipped_from BIGINT;
ALTER TABLE datums ADD COLUMN skipped_from_job BIGINT;

-- The match: a done datum that ran (not itself skipped) with this
-- fingerprint. Partial, so ready and running datums (the hot path) are not
-- in it until they are done.
CREATE INDEX datums_done_fingerprint ON datums (fingerprint)
    WHERE status = 'done' AND skipped_from IS NULL AND fingerprint IS NOT NULL;
-- The vanished datums: is there a datum with these inputs in the new job?
CREATE INDEX datums_job_input_key ON datums (job_id, input_key)
    WHERE input_key IS NOT NULL;
