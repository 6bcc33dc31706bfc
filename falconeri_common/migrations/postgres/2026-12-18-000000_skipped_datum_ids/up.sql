-- Datum ids for skipped datums, a block per planning batch (issue 11, the
-- incremental benchmark on PostgreSQL).
--
-- A skipped datum has no row in `datums` but keeps an id (`skipped_runs`).
-- Those ids came from the datums id sequence, one nextval per skipped
-- datum: about 8 microseconds each (the sequence's lock, a WAL record
-- every 32 values), 0.8 s of an unchanged rerun over 100,000 files. A
-- planning batch now takes its block in one statement, by raising this
-- one counter by the block's size (UPDATE ... RETURNING). Its ids start at
-- 2^52, far above anything the sequence will reach, so they never meet a
-- row's id; they stay below 2^53, so JavaScript (the dashboard) reads them
-- exactly. The row lock the UPDATE takes is held until the batch commits,
-- so two planners' blocks never overlap; a batch is short, so a planner
-- waits at most one batch of another. Skipped datums planned before this
-- migration keep their ids from the sequence.
CREATE TABLE skipped_datum_ids (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_id BIGINT NOT NULL CHECK (next_id >= 4503599627370496 AND next_id <= 9007199254740992)
);
INSERT INTO skipped_datum_ids (id, next_id) VALUES (1, 4503599627370496);
