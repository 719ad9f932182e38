-- outlast: expand
-- Events, faster (issue 20's benchmark). event_names.version counts the transactions that
-- took a name's lock (publishes and waits registering): a single publish on PostgreSQL
-- does everything in one statement and trusts its snapshot only when the version it
-- bumped is the one it read plus one (no lock holder committed in between).
-- What an event's publish did to each subscriber, [task_id, run_id, outcome, reason] each
-- (JSON), in the event's row: a publish writes no event_deliveries rows any more (those
-- are retained deliveries and replays). NULL for events logged before.
ALTER TABLE events ADD COLUMN fanout TEXT;

ALTER TABLE event_names ADD COLUMN version INTEGER NOT NULL DEFAULT 0;

-- cancel_on's match keys of a run, written with the run: the value at each of its task's
-- cancel_on match paths (canonical JSON), so an event cancels by an index lookup rather
-- than reading every unfinished run of the task. Runs created before this migration
-- have no rows here.
CREATE TABLE run_cancel_keys (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    path TEXT NOT NULL,
    value TEXT NOT NULL,
    run_id TEXT NOT NULL
);
CREATE INDEX run_cancel_keys_match ON run_cancel_keys (env, task_id, path, value);
CREATE INDEX run_cancel_keys_run ON run_cancel_keys (run_id);
