-- Failure policies (issue 11): the job's `max_failed_datums` resolved to a
-- count once its datums are planned (a percentage needs the datum count),
-- and how many of its datums had failed for good when it ended. Both NULL
-- where they do not apply (no limit; a job still running).
ALTER TABLE jobs ADD COLUMN max_failed_datums BIGINT;
ALTER TABLE jobs ADD COLUMN failed_datums BIGINT;
