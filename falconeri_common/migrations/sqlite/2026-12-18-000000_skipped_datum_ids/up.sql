-- Datum ids for skipped datums, a block per planning batch; the same as
-- the PostgreSQL migration (see it for why).
--
-- SQLite took its blocks by raising `sqlite_sequence` for `datums`, which
-- was cheap already; it now takes them from the same counter as
-- PostgreSQL, so both databases give skipped datums ids from 2^52 up
-- (below 2^53, which JavaScript reads exactly), never a row's, and list a
-- job's datums in the same order. The planning batch's IMMEDIATE
-- transaction keeps other planners out meanwhile.
CREATE TABLE skipped_datum_ids (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    next_id BIGINT NOT NULL CHECK (next_id >= 4503599627370496 AND next_id <= 9007199254740992)
);
INSERT INTO skipped_datum_ids (id, next_id) VALUES (1, 4503599627370496);
