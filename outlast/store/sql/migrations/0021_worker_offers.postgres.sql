-- outlast: expand
-- Start latency (issue 18): an idle worker's offer to take one run from a trigger. A
-- worker whose claim came back short posts its row in that claim's commit; a single
-- trigger (insert_run_alone) that finds one, with the queue and key below their limits
-- and no other run queued there, writes its run already claimed by that worker and
-- tells it in its NOTIFY: one commit, one WAL flush, from the trigger call to the body.
-- run_id: the run a trigger handed over (the offer is spent); the worker's next claim
-- takes the row away and starts that run if the notification never reached it.
CREATE TABLE worker_offers (
    worker_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    serves TEXT NOT NULL,                  -- JSON: queue -> task ids, as the worker claims them
    version TEXT,                          -- the worker's version (C11); NULL: any
    new_task_ids TEXT NOT NULL,            -- JSON list: tasks it may lock new runs to (C11)
    run_id TEXT                            -- the run handed over; NULL while on offer
);
CREATE INDEX worker_offers_env ON worker_offers (env) WHERE run_id IS NULL;
