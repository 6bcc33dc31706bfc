-- Datum lifecycle v2 (issue 9).
--
-- 1. A datum may be `publishing`: its worker reported done, and falconerid is
--    moving the staged outputs into the egress outside any transaction.
ALTER TABLE datums DROP CONSTRAINT datums_status_check;
ALTER TABLE datums ADD CONSTRAINT datums_status_check
    CHECK (status IN ('ready', 'running', 'publishing', 'done', 'error', 'canceled'));

-- 2. The queue position of a ready datum (its planning order, seq), NULL in
--    every other state. The
--    reservation orders by it through the partial index below, which holds
--    ready datums only; no other index can give that order, so the planner
--    can never walk the primary key past finished rows (issue 9, item 1).
ALTER TABLE datums ADD COLUMN ready_order BIGINT;
UPDATE datums SET ready_order = seq WHERE status = 'ready';
ALTER TABLE datums ADD CONSTRAINT datums_ready_order_check
    CHECK ((status = 'ready') = (ready_order IS NOT NULL));
DROP INDEX datums_job_ready;
CREATE INDEX datums_queue ON datums (job_id, ready_order) WHERE ready_order IS NOT NULL;
-- A worker's held datums (the idempotent re-reservation), and the babysitter's
-- look at publishing datums whose publisher died.
CREATE INDEX datums_held ON datums (job_id, owner) WHERE status = 'running';
CREATE INDEX datums_publishing_lease ON datums (lease_expires_at) WHERE status = 'publishing';

-- 3. Every attempt on record. The open attempt of a datum (outcome NULL) is
--    its current claim; every transition that ends a claim closes it.
CREATE TABLE attempts (
    id BIGSERIAL PRIMARY KEY,
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

-- 4. Output rows are written when publishing starts (so a crash mid-publish
--    knows what to finish) and belong to the attempt that staged them.
ALTER TABLE output_files ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE output_files ADD COLUMN staged_path TEXT NOT NULL DEFAULT '';
