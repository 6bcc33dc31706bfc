DROP TABLE job_stop_requests;
DROP INDEX workflows_run_key;
ALTER TABLE workflows DROP COLUMN run_key;
DROP INDEX jobs_run_key;
ALTER TABLE jobs DROP COLUMN run_key;
DROP INDEX schedules_pending;
ALTER TABLE schedules DROP COLUMN pending_until;
ALTER TABLE schedules DROP COLUMN pending_token;
ALTER TABLE schedules DROP COLUMN pending_tick;
