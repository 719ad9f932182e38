-- outlast: expand
-- Debounce and batch (issue 20, part 5): the pending run of each group, one row per
-- (env, task, kind, key). A debounced trigger or a batched event locks its group's row
-- first (an upsert), then changes the group's run in place while that run is still
-- DELAYED, or starts a new run and points the row at it: concurrent triggers for one key,
-- from any number of processes, see one pending run. size counts the triggers (debounce)
-- or events (batch) the pending run has taken.
CREATE TABLE run_groups (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    kind TEXT NOT NULL,                    -- debounce | batch
    key TEXT NOT NULL,                     -- '' for a task's single group
    run_id TEXT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL,    -- when the pending run's burst or batch began
    size INTEGER NOT NULL,
    PRIMARY KEY (env, task_id, kind, key)
);
CREATE INDEX run_groups_run ON run_groups (run_id);
