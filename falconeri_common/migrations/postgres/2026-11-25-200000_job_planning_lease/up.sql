-- A job whose datums are still being inserted, page by page as its inputs
-- are listed, holds a planning lease: the time until which the falconerid
-- listing it is known to be alive. NULL once every datum is in. Nothing
-- starts a job while this is set, and the babysitter deletes a job whose
-- planning lease ran out (its falconerid died mid-listing).
ALTER TABLE jobs ADD COLUMN planning_lease_until BIGINT;
