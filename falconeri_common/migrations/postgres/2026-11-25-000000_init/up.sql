-- falconeri's schema on PostgreSQL. Timestamps are milliseconds since the Unix
-- epoch (BIGINT), the same on both databases.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    pipeline_name TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ready', 'running', 'done', 'error', 'canceled')),
    datum_count BIGINT NOT NULL,
    parallelism INTEGER NOT NULL,
    datum_tries INTEGER NOT NULL,
    datum_timeout_ms BIGINT,
    egress_uri TEXT NOT NULL,
    worker_token TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    deadline_at BIGINT,
    error_message TEXT,
    retry_of BIGINT REFERENCES jobs (id)
);
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE datums (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    seq BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ready', 'running', 'done', 'error', 'canceled')),
    attempt INTEGER NOT NULL DEFAULT 0,
    -- Attempts cut short by the infrastructure (a worker stopped by its
    -- executor), which do not count against max_tries.
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
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX datums_job_seq ON datums (job_id, seq);
CREATE INDEX datums_job_status ON datums (job_id, status);
CREATE INDEX datums_running_lease ON datums (lease_expires_at) WHERE status = 'running';
CREATE INDEX datums_running_deadline ON datums (deadline_at) WHERE status = 'running';

CREATE TABLE input_files (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    datum_id BIGINT NOT NULL REFERENCES datums (id),
    uri TEXT NOT NULL,
    local_path TEXT NOT NULL
);
CREATE INDEX input_files_datum ON input_files (datum_id);

CREATE TABLE output_files (
    id BIGSERIAL PRIMARY KEY,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    datum_id BIGINT NOT NULL REFERENCES datums (id),
    uri TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX output_files_datum ON output_files (datum_id);

-- Reservation scans the ready datums of one job in id order.
CREATE INDEX datums_job_ready ON datums (job_id, id) WHERE status = 'ready';
