-- Version 9: honest usage. Each run keeps the time it executed (over all its attempts,
-- without queued time or parked waits), the time it sat queued and the time it was
-- parked; the ending statements add to them in the transaction that ends a segment.
-- Finished runs are folded into per task, per environment, per day rollups by the
-- scheduler, behind a watermark, so the rollups outlive the runs they came from.
ALTER TABLE runs ADD COLUMN active_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN queued_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN waited_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE INDEX runs_finished ON runs (finished_at, id) WHERE finished_at IS NOT NULL;

-- One row per (env, task, UTC day of the runs' creation). Histograms and per-kind counts
-- are JSON objects, merged in Python (percentiles over any span of days).
CREATE TABLE usage_daily (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    day BIGINT NOT NULL,                   -- UTC day start, epoch seconds
    runs BIGINT NOT NULL DEFAULT 0,       -- finished runs
    completed BIGINT NOT NULL DEFAULT 0,
    failed BIGINT NOT NULL DEFAULT 0,     -- FAILED or TIMED_OUT
    attempts BIGINT NOT NULL DEFAULT 0,
    retried BIGINT NOT NULL DEFAULT 0,    -- runs that took more than one attempt
    recovered BIGINT NOT NULL DEFAULT 0,  -- runs that failed an attempt, then completed
    active_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    queued_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    waited_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    max_active DOUBLE PRECISION NOT NULL DEFAULT 0,
    max_duration DOUBLE PRECISION NOT NULL DEFAULT 0,
    peak_concurrency BIGINT NOT NULL DEFAULT 0,  -- most runs seen executing at one sample
    child_runs BIGINT NOT NULL DEFAULT 0,
    steps_executed BIGINT NOT NULL DEFAULT 0,
    steps_replayed BIGINT NOT NULL DEFAULT 0,    -- finished steps a retry replayed
    durations TEXT NOT NULL DEFAULT '{}',  -- histogram of started -> finished seconds
    actives TEXT NOT NULL DEFAULT '{}',    -- histogram of active seconds per run
    waits TEXT NOT NULL DEFAULT '{}',      -- waits by kind
    children TEXT NOT NULL DEFAULT '{}',   -- child runs by task
    PRIMARY KEY (env, task_id, day)
);

-- Seconds a queue sat at its concurrency or rate limit with ready runs, per day (sampled).
CREATE TABLE usage_queue_daily (
    env TEXT NOT NULL,
    queue TEXT NOT NULL,
    day BIGINT NOT NULL,
    saturated_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (env, queue, day)
);

-- Where the rollup stands: every run finished before (finished_at, run_id) is counted.
CREATE TABLE usage_state (
    name TEXT PRIMARY KEY,
    finished_at DOUBLE PRECISION NOT NULL,
    run_id TEXT NOT NULL,
    sampled_at DOUBLE PRECISION NOT NULL
);
INSERT INTO usage_state (name, finished_at, run_id, sampled_at) VALUES ('rollup', 0, '', 0);
