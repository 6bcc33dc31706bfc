-- Undoes the datum lifecycle v2 migration (not run in a transaction; see
-- metadata.toml).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
ALTER TABLE output_files DROP COLUMN staged_path;
ALTER TABLE output_files DROP COLUMN attempt;
DROP TABLE attempts;
CREATE TABLE datums_v1 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ready', 'running', 'done', 'error', 'canceled')),
    attempt INTEGER NOT NULL DEFAULT 0,
    interrupted INTEGER NOT NULL DEFAULT 0,
    max_tries INTEGER NOT NULL,
    owner TEXT,
    lease_expires_at BIGINT,
    deadline_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    output TEXT,
    error_message TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    pod_failures INTEGER NOT NULL DEFAULT 0
);
INSERT INTO datums_v1 SELECT id, job_id, seq,
    CASE WHEN status = 'publishing' THEN 'running' ELSE status END, attempt, interrupted,
    max_tries, owner, lease_expires_at, deadline_at, started_at, finished_at, output,
    error_message, created_at, updated_at, pod_failures
FROM datums;
DROP TABLE datums;
ALTER TABLE datums_v1 RENAME TO datums;
CREATE UNIQUE INDEX datums_job_seq ON datums (job_id, seq);
CREATE INDEX datums_job_status ON datums (job_id, status);
CREATE INDEX datums_running_lease ON datums (lease_expires_at) WHERE status = 'running';
CREATE INDEX datums_running_deadline ON datums (deadline_at) WHERE status = 'running';
CREATE INDEX datums_job_ready ON datums (job_id, id) WHERE status = 'ready';
COMMIT;
PRAGMA foreign_keys = ON;
