-- Version 7: alerts and the errors page.
-- An alert rule: which event (run.failed, run.timed_out, queue.backlog, no_worker, or a
-- kind another feature raises) in which environment, filtered by task and queue, goes to
-- which webhook. The signing secret is shown once at creation and never returned again;
-- it is kept because every delivery is signed with it.
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    event TEXT NOT NULL,
    task_id TEXT,
    queue TEXT,
    older_than REAL,
    webhook_url TEXT NOT NULL,
    format TEXT NOT NULL,                  -- json | slack
    secret TEXT NOT NULL,
    created_at REAL NOT NULL,
    window_start REAL NOT NULL DEFAULT 0,  -- the storm limit's current window
    window_sent INTEGER NOT NULL DEFAULT 0,            -- deliveries queued in it
    firing TEXT NOT NULL DEFAULT '[]'      -- JSON: conditions (queue, task) now firing
);
CREATE INDEX alert_rules_env ON alert_rules (env, event);

-- The outbox: one row per message to send, written in the transaction that saw the event.
-- A sender claims a due row for a short lease, posts it, and records the attempt.
CREATE TABLE alert_deliveries (
    id TEXT PRIMARY KEY,                   -- the webhook-id header: receivers dedupe by it
    env TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    event TEXT NOT NULL,
    payload TEXT NOT NULL,                 -- JSON, rendered per the rule's format at send time
    status TEXT NOT NULL,                  -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    next_at REAL NOT NULL,
    claimed_until REAL NOT NULL DEFAULT 0,
    delivered_at REAL,
    summary_of INTEGER NOT NULL DEFAULT 0  -- a storm summary: how many events it stands for
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE status = 'pending';
CREATE INDEX alert_deliveries_rule ON alert_deliveries (rule_id, created_at);

CREATE TABLE alert_attempts (
    delivery_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    at REAL NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration REAL NOT NULL,
    PRIMARY KEY (delivery_id, n)
);

-- Failures grouped by fingerprint (outlast/_fingerprint.py), kept by a watermark scan in
-- the scheduler's tick, never by the commit of a failing run.
CREATE TABLE error_groups (
    env TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    exc_type TEXT NOT NULL,
    message TEXT NOT NULL,                 -- with numbers and ids masked
    frame TEXT NOT NULL,                   -- the top frame in task code, '' if unknown
    status TEXT NOT NULL,                  -- open | resolved | ignored
    count INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    sample_run_id TEXT NOT NULL,
    resolved_at REAL,
    reopened INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env, fingerprint)
);
CREATE INDEX error_groups_seen ON error_groups (env, last_seen);

-- One row per failed run seen: the scan's memory (a run is counted once) and the
-- source of counts over time and tasks affected.
CREATE TABLE error_occurrences (
    run_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX error_occurrences_group ON error_occurrences (env, fingerprint, at);

-- How far the scan has read, by finished_at; it rereads a short lag behind it, since a
-- run's finished_at is its transaction's clock and commits land out of that order.
CREATE TABLE failure_scan (
    id INTEGER PRIMARY KEY,
    watermark REAL NOT NULL
);
INSERT INTO failure_scan (id, watermark) VALUES (1, 0);

CREATE INDEX runs_failed ON runs (finished_at) WHERE status IN ('FAILED', 'TIMED_OUT');
