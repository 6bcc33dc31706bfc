-- Datum lifecycle v2 (issue 9); see the PostgreSQL migration of the same name
-- for what each change is for. SQLite cannot alter a CHECK constraint, so the
-- datums table is rebuilt (https://sqlite.org/lang_altertable.html, "making
-- other kinds of table schema changes").
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE datums_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('ready', 'running', 'publishing', 'done', 'error', 'canceled')),
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
    pod_failures INTEGER NOT NULL DEFAULT 0,
    ready_order BIGINT,
    CHECK ((status = 'ready') = (ready_order IS NOT NULL))
);
INSERT INTO datums_v2 (id, job_id, seq, status, attempt, interrupted, max_tries, owner,
    lease_expires_at, deadline_at, started_at, finished_at, output, error_message, created_at,
    updated_at, pod_failures, ready_order)
SELECT id, job_id, seq, status, attempt, interrupted, max_tries, owner, lease_expires_at,
    deadline_at, started_at, finished_at, output, error_message, created_at, updated_at,
    pod_failures, CASE WHEN status = 'ready' THEN seq END
FROM datums;
DROP TABLE datums;
ALTER TABLE datums_v2 RENAME TO datums;

CREATE UNIQUE INDEX datums_job_seq ON datums (job_id, seq);
CREATE INDEX datums_job_status ON datums (job_id, status);
CREATE INDEX datums_running_lease ON datums (lease_expires_at) WHERE status = 'running';
CREATE INDEX datums_running_deadline ON datums (deadline_at) WHERE status = 'running';
CREATE INDEX datums_queue ON datums (job_id, ready_order) WHERE ready_order IS NOT NULL;
CREATE INDEX datums_held ON datums (job_id, owner) WHERE status = 'running';
CREATE INDEX datums_publishing_lease ON datums (lease_expires_at) WHERE status = 'publishing';

CREATE TABLE attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    datum_id BIGINT NOT NULL REFERENCES datums (id),
    number INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT,
    outcome TEXT CHECK (outcome IN ('done', 'error', 'timed_out', 'lease_expired',
        'interrupted', 'pod_failure', 'worker_lost', 'canceled', 'publish_failed')),
    exit_code INTEGER,
    signal INTEGER,
    error_message TEXT,
    UNIQUE (datum_id, number)
);
CREATE INDEX attempts_job_outcome ON attempts (job_id, outcome);
CREATE INDEX attempts_job_worker ON attempts (job_id, worker_id);

ALTER TABLE output_files ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE output_files ADD COLUMN staged_path TEXT NOT NULL DEFAULT '';

COMMIT;
PRAGMA foreign_keys = ON;
