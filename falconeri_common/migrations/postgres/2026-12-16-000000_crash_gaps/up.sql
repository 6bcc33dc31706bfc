-- Closing the crash gaps of schedules, workflows and failure policies.
--
-- A schedule tick is exactly once across a crash: the guarded UPDATE that
-- takes a tick also records it as pending (`pending_tick`), owned by the
-- taker (`pending_token`) until `pending_until`, which the taker renews
-- while it creates the run. The run (a job or a workflow run) carries the
-- idempotency key `schedule:<id>:<tick>` in `run_key`, unique, so a second
-- creation of the same tick's run fails at its first INSERT. Recording the
-- run clears the pending tick; a pending tick whose owner stopped renewing
-- it (died) is taken over by any replica's scheduler, which finds the run
-- by its key or creates it.
ALTER TABLE schedules ADD COLUMN pending_tick BIGINT;
ALTER TABLE schedules ADD COLUMN pending_token TEXT;
ALTER TABLE schedules ADD COLUMN pending_until BIGINT;
CREATE INDEX schedules_pending ON schedules (pending_until) WHERE pending_tick IS NOT NULL;

ALTER TABLE jobs ADD COLUMN run_key TEXT;
CREATE UNIQUE INDEX jobs_run_key ON jobs (run_key) WHERE run_key IS NOT NULL;
ALTER TABLE workflows ADD COLUMN run_key TEXT;
CREATE UNIQUE INDEX workflows_run_key ON workflows (run_key) WHERE run_key IS NOT NULL;

-- A `fail_job` rule that matched a worker's report is recorded here in the
-- report's own transaction, so its job's stop survives a crash between that
-- transaction and the stop: the babysitter finishes every request it finds
-- (`Job::stop` is guarded, so a job stopped already stays as it ended) and
-- then deletes it. No foreign key and no write to the job row: the report's
-- transaction holds datum rows, and `Job::stop` locks the job row before
-- the datum rows; touching the job row here would be the reverse order.
CREATE TABLE job_stop_requests (
    job_id BIGINT PRIMARY KEY,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
