-- Workflows and schedules (issue 11, sections 4 and 5).
--
-- A workflow run is a row of `workflows` with one row of `workflow_steps`
-- per step. A step goes waiting → starting (claimed by one falconerid,
-- `claim_token`, until `claim_until`) → started (its job in `job_id`);
-- or waiting → canceled (an upstream step failed, `reason` says which),
-- and back to waiting when that upstream is retried; or starting → failed
-- (its job could not be created, `reason` says why). A job retried with
-- `job retry` is adopted by its step (job_id moves to the new job).
--
-- A schedule starts one run (a job or a workflow) per tick of its cron
-- expression in its time zone. `next_run_at` is the tick due next; the
-- replica that moves it forward with a conditional UPDATE is the one that
-- starts the run, so each tick runs once whatever the number of replicas.
CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    -- 'job' (target is a pipeline spec) or 'workflow' (a workflow spec).
    target_kind TEXT NOT NULL CHECK (target_kind IN ('job', 'workflow')),
    target TEXT NOT NULL,
    incremental BOOLEAN NOT NULL,
    paused BOOLEAN NOT NULL,
    -- NULL while paused.
    next_run_at BIGINT,
    last_run_at BIGINT,
    last_run TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX schedules_next_run ON schedules (next_run_at) WHERE next_run_at IS NOT NULL;

CREATE TABLE workflows (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    workflow_name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    schedule_id BIGINT REFERENCES schedules (id) ON DELETE SET NULL,
    -- Each step's job is created incremental (a schedule's --incremental).
    incremental BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE workflow_steps (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id BIGINT NOT NULL REFERENCES workflows (id),
    -- Topological position: a step comes after the steps it waits for.
    position INTEGER NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    -- JSON: [{"step": <position>, "kind": "after" | "egress"}, ...]
    upstream TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('waiting', 'starting', 'started', 'canceled', 'failed')),
    job_id BIGINT REFERENCES jobs (id),
    claim_token TEXT,
    claim_until BIGINT,
    reason TEXT,
    updated_at BIGINT NOT NULL,
    UNIQUE (workflow_id, name),
    UNIQUE (workflow_id, position)
);
CREATE INDEX workflow_steps_job ON workflow_steps (job_id);
CREATE INDEX workflow_steps_pending ON workflow_steps (workflow_id) WHERE state IN ('waiting', 'starting', 'canceled');

-- A step adopts the retry of its failed job: found by retry_of.
CREATE INDEX jobs_retry_of ON jobs (retry_of) WHERE retry_of IS NOT NULL;
