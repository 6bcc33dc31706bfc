-- Log chunks as files (issue 10's log benchmark): a chunk's bytes may live
-- as an object under falconerid's logs location (`--logs-location`) rather
-- than in `data`. `object` is its name relative to that location, written
-- before the row and never rewritten; `data` is then empty. Rows stored in
-- the database (`--logs-location database`, and every row from before this
-- migration) keep `object` NULL and their bytes in `data`.
ALTER TABLE log_chunks ADD COLUMN object TEXT;
