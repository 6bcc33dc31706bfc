ALTER TABLE output_files DROP COLUMN staged_path;
ALTER TABLE output_files DROP COLUMN attempt;
DROP TABLE attempts;
DROP INDEX datums_publishing_lease;
DROP INDEX datums_held;
DROP INDEX datums_queue;
CREATE INDEX datums_job_ready ON datums (job_id, id) WHERE status = 'ready';
ALTER TABLE datums DROP CONSTRAINT datums_ready_order_check;
ALTER TABLE datums DROP COLUMN ready_order;
UPDATE datums SET status = 'running' WHERE status = 'publishing';
ALTER TABLE datums DROP CONSTRAINT datums_status_check;
ALTER TABLE datums ADD CONSTRAINT datums_status_check
    CHECK (status IN ('ready', 'running', 'done', 'error', 'canceled'));
