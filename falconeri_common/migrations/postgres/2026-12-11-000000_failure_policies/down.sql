ALTER TABLE jobs DROP COLUMN failed_datums;
ALTER TABLE jobs DROP COLUMN max_failed_datums;
