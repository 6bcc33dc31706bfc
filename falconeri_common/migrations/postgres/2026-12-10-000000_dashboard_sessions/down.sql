CREATE INDEX datums_job_status ON datums (job_id, status);
DROP INDEX datums_job_status_id;
DROP TABLE dashboard_sessions;
