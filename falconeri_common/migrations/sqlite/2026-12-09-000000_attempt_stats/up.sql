-- Per-attempt statistics (issue 10): what the worker measured and sent with
-- its final report (`stats` in done, error and batch reports). NULL where a
-- phase was not reached or the worker sent nothing (an older worker, an
-- attempt ended by the babysitter). Durations are milliseconds; CPU times
-- are the command's user and system time; max_rss_bytes is the peak
-- resident set of the largest single process among the command and the
-- descendants it waited for (the child's rusage from wait4).
--
-- No index: `job describe`'s percentiles read a job's attempts through
-- attempts_job_outcome, and an index here would be one more to update on
-- every report (the hot path) for a query run by people.
ALTER TABLE attempts ADD COLUMN download_files BIGINT;
ALTER TABLE attempts ADD COLUMN download_bytes BIGINT;
ALTER TABLE attempts ADD COLUMN download_ms BIGINT;
ALTER TABLE attempts ADD COLUMN command_ms BIGINT;
ALTER TABLE attempts ADD COLUMN user_cpu_ms BIGINT;
ALTER TABLE attempts ADD COLUMN system_cpu_ms BIGINT;
ALTER TABLE attempts ADD COLUMN max_rss_bytes BIGINT;
ALTER TABLE attempts ADD COLUMN upload_files BIGINT;
ALTER TABLE attempts ADD COLUMN upload_bytes BIGINT;
ALTER TABLE attempts ADD COLUMN upload_ms BIGINT;
