-- Logs of every attempt (issue 10): the command's stdout and stderr and the
-- worker's own lines, kept after the worker is gone.
--
-- One row per chunk the worker sent (up to 64 KiB of lines, or 200 ms of
-- them), keyed by the attempt and the worker's own chunk number, so a
-- resent chunk is recognized. `data` holds the lines as raw bytes in a small
-- binary framing (models/logs.rs), so any byte a command prints (NUL, invalid
-- UTF-8) is kept as it was. `start_offset`/`end_offset` count the attempt's
-- output bytes before and after the chunk: the cap keeps the chunks that end
-- within its first half and the last half's worth, and a reader tells a cut
-- from the gap between two offsets.
CREATE TABLE log_chunks (
    datum_id BIGINT NOT NULL REFERENCES datums (id),
    attempt INTEGER NOT NULL,
    seq BIGINT NOT NULL,
    job_id BIGINT NOT NULL,
    start_offset BIGINT NOT NULL,
    end_offset BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (datum_id, attempt, seq)
);
-- A job's logs in datum order (`job logs`), and its newest chunks (`job logs
-- --follow` reads what arrived since it last looked).
CREATE INDEX log_chunks_job ON log_chunks (job_id, datum_id, attempt, seq);
CREATE INDEX log_chunks_job_created ON log_chunks (job_id, created_at);
