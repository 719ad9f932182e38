-- Version 2: runs can be DEQUEUED (claimed by a worker without a slot, to start there when
-- a run of their queue and key ends). A dead worker's DEQUEUED runs are found with its
-- EXECUTING ones, and cancels and heartbeats read both: the index covers both statuses.
DROP INDEX runs_executing;
CREATE INDEX runs_executing ON runs (worker_id) WHERE status IN ('EXECUTING', 'DEQUEUED');
-- A run a dead worker held DEQUEUED goes back to the queue with its attempt unspent and
-- is never held DEQUEUED again (see runs.no_handover in the schema).
ALTER TABLE runs ADD COLUMN no_handover INTEGER NOT NULL DEFAULT 0;
