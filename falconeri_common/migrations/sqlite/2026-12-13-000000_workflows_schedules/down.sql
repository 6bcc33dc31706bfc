DROP INDEX jobs_retry_of;
DROP TABLE workflow_steps;
DROP TABLE workflows;
DROP TABLE schedules;
