-- Dashboard sign-ins (issue 10 §4). A session is found by the SHA-256 of
-- its cookie's random id, so someone who can read this table cannot sign
-- in with what they read; `csrf_token` is the per-session secret every
-- dashboard action must echo. (PostgreSQL also re-keys datums_job_status
-- with the id; SQLite's index carries the rowid, the id, already.)
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY NOT NULL,
    csrf_token TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX dashboard_sessions_expires ON dashboard_sessions (expires_at);
