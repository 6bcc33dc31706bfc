ALTER TABLE jobs DROP COLUMN planning_lease_until;
