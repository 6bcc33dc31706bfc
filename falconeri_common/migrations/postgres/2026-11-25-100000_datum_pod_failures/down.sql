ALTER TABLE datums DROP COLUMN pod_failures;
