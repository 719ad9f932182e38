-- outlast: expand
-- PostgreSQL's worker_offers (start latency, issue 18), which SQLite's triggers never use
-- (its trigger and claim take turns on one file): made so both backends have one schema.
CREATE TABLE worker_offers (
    worker_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    serves TEXT NOT NULL,                  -- JSON: queue -> task ids, as the worker claims them
    version TEXT,                          -- the worker's version (C11); NULL: any
    new_task_ids TEXT NOT NULL,            -- JSON list: tasks it may lock new runs to (C11)
    run_id TEXT                            -- the run handed over; NULL while on offer
);
CREATE INDEX worker_offers_env ON worker_offers (env) WHERE run_id IS NULL;
