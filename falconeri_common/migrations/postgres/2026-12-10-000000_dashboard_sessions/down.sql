CREATE INDEX attempts_job_outcome ON attempts (job_id, outcome);
DROP INDEX attempts_job_outcome_datum;
CREATE INDEX datums_job_status ON datums (job_id, status);
DROP INDEX datums_job_status_id;
DROP TABLE dashboard_sessions;
