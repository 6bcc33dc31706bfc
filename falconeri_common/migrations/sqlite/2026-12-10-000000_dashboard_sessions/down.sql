CREATE INDEX attempts_job_outcome ON attempts (job_id, outcome);
DROP INDEX attempts_job_outcome_datum;
DROP TABLE dashboard_sessions;
