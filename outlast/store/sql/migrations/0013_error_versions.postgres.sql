-- outlast: expand
-- Versions affected on the errors page (issue 21): each failure's occurrence records the
-- task code version its run was locked to (runs.version, issue 19). NULL for failures
-- grouped before this migration and for runs that never locked to a version.
ALTER TABLE error_occurrences ADD COLUMN version TEXT;
