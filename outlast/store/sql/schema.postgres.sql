-- The current schema, PostgreSQL dialect. Keep in sync with schema.sqlite.sql and with the
-- migrations: tests/test_migrations.py checks that migrating an empty database gives this.
-- Timestamps are UNIX epoch seconds (DOUBLE PRECISION); JSON values are TEXT.

CREATE TABLE outlast_schema (version INTEGER NOT NULL);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,               -- run_<time-sortable>, so id order is creation order
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    queue TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    output TEXT,
    error TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    tags TEXT NOT NULL DEFAULT '[]',
    attempt INTEGER NOT NULL DEFAULT 1,    -- the current (or next) attempt, 1-based
    max_attempts INTEGER NOT NULL,
    priority DOUBLE PRECISION DEFAULT 0,  -- a finished row: NULL if 0 (migration 0025)
    concurrency_key TEXT NOT NULL DEFAULT '',  -- '' when the run has none
    idempotency_key TEXT,
    idempotency_expires_at DOUBLE PRECISION,
    idempotency_active INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    available_at DOUBLE PRECISION,  -- not claimable before this (a finished row: NULL if created_at)
    ready_at DOUBLE PRECISION,  -- available_at - priority: the claim order (a finished row: NULL)
    delay_until DOUBLE PRECISION,
    ttl_expires_at DOUBLE PRECISION,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    max_duration DOUBLE PRECISION,
    exec_seconds DOUBLE PRECISION DEFAULT 0,  -- this attempt's compute before its last wait (finished: NULL if 0)
    worker_id TEXT,
    lease_epoch INTEGER NOT NULL DEFAULT 0,    -- bumped by every claim: the fencing token (C4)
    segment_started_at DOUBLE PRECISION,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    holds_slot INTEGER NOT NULL DEFAULT 0,     -- 1 while counted in queue_slots (C5)
    parent_id TEXT,
    root_id TEXT,
    depth INTEGER NOT NULL DEFAULT 0,
    replayed_from TEXT,
    parent_waitpoint_id TEXT,              -- the parent's waitpoint this child completes
    wait_reason TEXT,                      -- JSON: what a WAITING run waits for
    hooks_due INTEGER NOT NULL DEFAULT 0,  -- ended outside a worker; end hooks not yet run
    -- 1 once a worker died holding the run DEQUEUED: only a committed claim starts it
    -- from then on, so a run that kills its worker cannot loop through hand-overs.
    no_handover INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX runs_ready ON runs (env, queue, concurrency_key, ready_at) WHERE status = 'QUEUED';
CREATE INDEX runs_delayed ON runs (delay_until) WHERE status = 'DELAYED';
CREATE INDEX runs_ttl ON runs (ttl_expires_at)
    WHERE ttl_expires_at IS NOT NULL AND status IN ('QUEUED', 'DELAYED');
CREATE INDEX runs_executing ON runs (worker_id) WHERE status IN ('EXECUTING', 'DEQUEUED');
CREATE UNIQUE INDEX runs_idempotency ON runs (env, task_id, idempotency_key)
    WHERE idempotency_active = 1;
-- The run lists, by environment and by task, in id order (migrations/0023_runs_list_keys):
-- keyed on the id's 10 time digits and 2 random ones rather than the whole id, 14
-- bytes narrower an entry; (key, id) order is id order (outlast/store/_rows.py ID_KEY).
CREATE INDEX runs_env_idp ON runs (env, substr(id, 5, 12));
CREATE INDEX runs_env_task_idp ON runs (env, task_id, substr(id, 5, 12));
-- Every run but a COMPLETED one (migrations/0017_runs_status_index_live): lists by
-- status and the live runs per status; finished runs, nearly all COMPLETED, leave it, so
-- it does not grow with history (a list of COMPLETED runs goes by runs_env_idp).
CREATE INDEX runs_env_status_live ON runs (env, status, id) WHERE status <> 'COMPLETED';
CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_hooks_due ON runs (env, task_id) WHERE hooks_due = 1;

CREATE TABLE run_tags (
    env TEXT NOT NULL,
    tag TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (env, tag, run_id)
);

-- Durable operations of a run, by key. A row is written only once its outcome is known
-- (status 'done'), or when a wait is registered (status 'waiting').
CREATE TABLE journal (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,                    -- step | sleep | token | child | children | trigger
    fingerprint TEXT,                      -- what was asked; a mismatch is non-determinism
    status TEXT NOT NULL,                  -- done | waiting
    output TEXT,
    waitpoint_id TEXT,
    attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
    PRIMARY KEY (run_id, key)
);

-- The run's timeline besides steps: logs, failed attempts, metadata changes.
CREATE TABLE run_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    attempt INTEGER,
    level TEXT,
    message TEXT,
    data TEXT
);
CREATE INDEX run_events_run ON run_events (run_id, id);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    concurrency INTEGER NOT NULL,
    tasks TEXT NOT NULL,                   -- JSON list of task ids served
    status TEXT NOT NULL,                  -- alive | stopped | dead
    lock_key BIGINT,                      -- PostgreSQL: the advisory lock held for life
    lock_path TEXT,                        -- SQLite: the file locked for life
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL,
    lease_expires_at DOUBLE PRECISION NOT NULL,
    stopped_at DOUBLE PRECISION
);
CREATE INDEX workers_alive ON workers (lease_expires_at) WHERE status = 'alive';

-- Queues: declared by code (upserted when a worker starts) or changed at runtime.
CREATE TABLE queues (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    concurrency_limit INTEGER,             -- per key when runs carry a concurrency_key
    global_limit INTEGER,                  -- optional cap over all keys
    rate_limit_count INTEGER,
    rate_limit_period DOUBLE PRECISION,
    rate_window TEXT NOT NULL DEFAULT '[]',   -- start times in the current rate window
    paused INTEGER NOT NULL DEFAULT 0,
    limit_overridden INTEGER NOT NULL DEFAULT 0,   -- a runtime change wins over code
    executing INTEGER NOT NULL DEFAULT 0,  -- slots held over all keys
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, name)
);

-- One counter row per (queue, concurrency key), updated in the claim and completion
-- transactions, so capacity is never a COUNT(*) over runs.
CREATE TABLE queue_slots (
    env TEXT NOT NULL,
    queue TEXT NOT NULL,
    ckey TEXT NOT NULL,
    executing INTEGER NOT NULL DEFAULT 0,
    last_claim_at DOUBLE PRECISION NOT NULL DEFAULT 0, -- round robin: least recently served key first
    PRIMARY KEY (env, queue, ckey)
);

CREATE TABLE waitpoints (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    kind TEXT NOT NULL,                    -- sleep | token | child | children
    status TEXT NOT NULL,                  -- pending | completed | timed_out
    run_id TEXT,                           -- the run that created it, if any
    timeout_at DOUBLE PRECISION,                       -- a sleep's wake time or a token's timeout
    output TEXT,
    is_error INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    idempotency_expires_at DOUBLE PRECISION,
    tags TEXT NOT NULL DEFAULT '[]',
    pending_children INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    completed_at DOUBLE PRECISION
);
CREATE INDEX waitpoints_due ON waitpoints (timeout_at)
    WHERE status = 'pending' AND timeout_at IS NOT NULL;
CREATE INDEX waitpoints_env ON waitpoints (env, status, id);
CREATE UNIQUE INDEX waitpoints_idempotency ON waitpoints (env, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Which runs are blocked on which waitpoints. A run resumes when any of them completes
-- and replays as far as it can.
CREATE TABLE run_waits (
    waitpoint_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (waitpoint_id, run_id)
);
CREATE INDEX run_waits_run ON run_waits (run_id);

-- Task definitions published by workers, so a process that never imported the task code
-- (an app, the server) can check a task id and validate a payload against its schema.
CREATE TABLE tasks (
    env TEXT NOT NULL,
    id TEXT NOT NULL,
    queue TEXT NOT NULL,
    payload_schema TEXT NOT NULL,
    spec TEXT NOT NULL,                    -- JSON: retry policy, max_duration, tags, cron
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, id)
);

-- Secret keys are stored as SHA-256 hashes; the key itself is shown once, at creation.
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);

-- A client's retried request (same request idempotency key) gets the first answer (C1).
CREATE TABLE api_requests (
    env TEXT NOT NULL,
    key TEXT NOT NULL,
    response TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, key)
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Dashboard logins: the SHA-256 of the session id a signed cookie carries. A logout
-- deletes the row, and a cookie whose row is gone or expired is signed out.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);

-- Large payloads uploaded before a trigger (the Trigger.dev SDK offloads packets of
-- 128 KB or more to a presigned URL, then triggers with the storage path).
CREATE TABLE packets (
    env TEXT NOT NULL,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    data TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, path)
);

-- Cron schedules. A DECLARATIVE one comes from @task(cron=...) and is created, updated or
-- deactivated when a worker starts with that code (one per task: the partial unique
-- index); an IMPERATIVE one is made at runtime, upserted by its deduplication key.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,                   -- sched_<time-sortable>
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    type TEXT NOT NULL,                    -- DECLARATIVE | IMPERATIVE
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,                -- IANA name; slots are wall times there
    external_id TEXT,                      -- e.g. the tenant's id; passed to each run
    deduplication_key TEXT,
    active INTEGER NOT NULL DEFAULT 1,
    in_code INTEGER NOT NULL DEFAULT 0,    -- declarative: the last worker start declared it
    next_run_at DOUBLE PRECISION,          -- the next slot; compared and set by each fire
    last_run_at DOUBLE PRECISION,          -- the last slot fired
    last_run_id TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX schedules_dedup ON schedules (env, deduplication_key)
    WHERE deduplication_key IS NOT NULL;
CREATE UNIQUE INDEX schedules_declarative ON schedules (env, task_id)
    WHERE type = 'DECLARATIVE';
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE active = 1;
CREATE INDEX schedules_env ON schedules (env, id);

-- One row per fired slot. Its primary key is what makes a slot fire once however many
-- schedulers run (C6): it is inserted in the same transaction as the slot's run.
CREATE TABLE schedule_slots (
    schedule_id TEXT NOT NULL,
    slot BIGINT NOT NULL,                  -- the slot's instant, epoch seconds
    run_id TEXT NOT NULL,
    fired_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (schedule_id, slot)
);
CREATE INDEX schedule_slots_fired ON schedule_slots (fired_at);

-- Bulk actions (see migrations/0004_bulk_actions): cancel or replay every run matching a
-- filter, in batches; the cursor moves in the same transaction as each batch.
CREATE TABLE bulk_actions (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    action TEXT NOT NULL,                  -- cancel | replay
    filter TEXT NOT NULL,                  -- JSON: task, status, tag, queue, created_from/to
    bound_id TEXT NOT NULL,                -- runs with id <= bound_id ('' when there were none)
    cursor TEXT NOT NULL DEFAULT '',       -- the last run id a committed batch covered
    status TEXT NOT NULL,                  -- running | completed | aborted
    total INTEGER NOT NULL,                -- runs matching when it was created
    processed INTEGER NOT NULL DEFAULT 0,  -- runs the committed batches covered
    succeeded INTEGER NOT NULL DEFAULT 0,  -- canceled or replayed
    requested INTEGER NOT NULL DEFAULT 0,  -- cancel: executing, asked to stop
    skipped INTEGER NOT NULL DEFAULT 0,    -- already ended (cancel), or could not be replayed
    last_error TEXT,                       -- why the latest run was skipped
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION
);
CREATE INDEX bulk_actions_env ON bulk_actions (env, id);

-- A token's completion buttons in the dashboard (see migrations/0004_bulk_actions).
ALTER TABLE waitpoints ADD COLUMN buttons TEXT;

-- Expand-then-contract upgrades: migrations applied, by name and kind; processes and the
-- release and migrations they run (migrations/0004_expand_contract).
CREATE TABLE outlast_migrations (
    name TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    kind TEXT NOT NULL,                    -- expand | contract
    applied_at DOUBLE PRECISION NOT NULL,
    release TEXT NOT NULL                  -- the outlast release that applied it
);
CREATE TABLE processes (
    id TEXT PRIMARY KEY,                   -- a worker's id, or server_<random>
    kind TEXT NOT NULL,                    -- worker | server
    env TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    release TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    migrations TEXT NOT NULL,              -- JSON list of the migration names its code knows
    started_at DOUBLE PRECISION NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,                   -- servers: refreshed while they run
    stopped_at DOUBLE PRECISION,
    listen TEXT,                           -- a server's host:port (0005_process_endpoints)
    dashboard TEXT                         -- password | open | locked
);
CREATE INDEX processes_live ON processes (seen_at) WHERE stopped_at IS NULL;

-- Version 8: the trace context a run was triggered under (W3C traceparent), written only
-- when tracing is on (outlast[otel]), so every worker that takes the run up (after a
-- crash, a retry or a long wait) continues the caller's trace. A table of its own: the
-- hot runs row and its inserts stay as they were when tracing is off.
CREATE TABLE run_traces (
    run_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    traceparent TEXT NOT NULL
);

-- Version 7: alerts and the errors page.
-- An alert rule: which event (run.failed, run.timed_out, queue.backlog, no_worker, or a
-- kind another feature raises) in which environment, filtered by task and queue, goes to
-- which webhook. The signing secret is shown once at creation and never returned again;
-- it is kept, sealed (outlast/_secret_box.py), because every delivery is signed with it.
-- Rules from before secrets were sealed hold the plaintext whsec_… until a process with
-- the key seals it (outlast/_alerts.py, seal_legacy_secrets).
CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    event TEXT NOT NULL,
    task_id TEXT,
    queue TEXT,
    older_than DOUBLE PRECISION,
    webhook_url TEXT NOT NULL,
    format TEXT NOT NULL,                  -- json | slack
    secret TEXT NOT NULL,                  -- sealed (plaintext whsec_… if from before)
    created_at DOUBLE PRECISION NOT NULL,
    window_start DOUBLE PRECISION NOT NULL DEFAULT 0,  -- the storm limit's current window
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
    created_at DOUBLE PRECISION NOT NULL,
    next_at DOUBLE PRECISION NOT NULL,
    claimed_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    delivered_at DOUBLE PRECISION,
    summary_of INTEGER NOT NULL DEFAULT 0  -- a storm summary: how many events it stands for
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (next_at) WHERE status = 'pending';
CREATE INDEX alert_deliveries_rule ON alert_deliveries (rule_id, created_at);

CREATE TABLE alert_attempts (
    delivery_id TEXT NOT NULL,
    n INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    error TEXT,
    duration DOUBLE PRECISION NOT NULL,
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
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION NOT NULL,
    sample_run_id TEXT NOT NULL,
    resolved_at DOUBLE PRECISION,
    reopened INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (env, fingerprint)
);
CREATE INDEX error_groups_seen ON error_groups (env, last_seen);

-- One row per failed run seen: the scan's memory (a run is counted once) and the
-- source of counts over time and the tasks and versions affected.
CREATE TABLE error_occurrences (
    run_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    version TEXT                           -- the run's task code version; NULL: none
);
CREATE INDEX error_occurrences_group ON error_occurrences (env, fingerprint, at);

-- How far the scan has read, by finished_at; it rereads a short lag behind it, since a
-- run's finished_at is its transaction's clock and commits land out of that order.
CREATE TABLE failure_scan (
    id INTEGER PRIMARY KEY,
    watermark DOUBLE PRECISION NOT NULL
);
INSERT INTO failure_scan (id, watermark) VALUES (1, 0);

CREATE INDEX runs_failed ON runs (finished_at) WHERE status IN ('FAILED', 'TIMED_OUT');

-- Events (issue 20): a per-environment log of published events, what each one did to
-- each subscribed task (a run, filtered out, ...), and the runs parked waiting for one.
-- An event's id deduplicates while dedup_active = 1 (its window, default 24 h); the row
-- stays in the log until expires_at (its retention), then the pruner removes it.
CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env TEXT NOT NULL,
    id TEXT NOT NULL,                      -- the publisher's id (or a generated evt_...)
    name TEXT NOT NULL,
    data TEXT NOT NULL,                    -- JSON
    created_at DOUBLE PRECISION NOT NULL,
    dedup_until DOUBLE PRECISION NOT NULL,
    dedup_active INTEGER NOT NULL DEFAULT 1,
    expires_at DOUBLE PRECISION NOT NULL,
    fanout TEXT                            -- JSON: what its publish did (0015)
);
CREATE UNIQUE INDEX events_dedup ON events (env, id) WHERE dedup_active = 1;
CREATE INDEX events_env_seq ON events (env, seq);
CREATE INDEX events_env_name ON events (env, name, seq);
-- An event by id (ev_get): events_dedup while its id deduplicates, this once released
-- (0026_events_released; written only when an id is published again past its window).
CREATE INDEX events_released ON events (env, id, seq) WHERE dedup_active = 0;
CREATE INDEX events_expiry ON events (expires_at);

-- What one event did to one subscriber: outcome run | filtered | invalid | replayed.
-- Fan-out and retained replay insert at most one non-replay row per (event, task); a
-- deliberate replay (outlast events replay) adds rows with replay = 1.
CREATE TABLE event_deliveries (
    event_seq BIGINT NOT NULL,
    task_id TEXT NOT NULL,
    replay INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    outcome TEXT NOT NULL,
    reason TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX event_deliveries_once ON event_deliveries (event_seq, task_id)
    WHERE replay = 0;
CREATE INDEX event_deliveries_event ON event_deliveries (event_seq);

-- One row per (env, event name) published: its lock serialises a publish against a
-- wait.for_event registering on that name, so an event either finds the wait or the
-- wait finds the event (no gap between the two transactions).
CREATE TABLE event_names (
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    last_at DOUBLE PRECISION NOT NULL,
    version BIGINT NOT NULL DEFAULT 0,  -- lock takers (0015)
    PRIMARY KEY (env, name)
);

-- A run waiting for an event (wait.for_event): the waitpoint it is parked on and what
-- completes it: an event of this name whose value at match_path equals match_value (JSON),
-- or for which expr (CEL) is true.
CREATE TABLE event_waits (
    waitpoint_id TEXT PRIMARY KEY,
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    match_path TEXT,
    match_value TEXT,
    expr TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX event_waits_name ON event_waits (env, name);

-- Usage (version 9). Each run keeps the time it executed (over all its attempts,
-- without queued time or parked waits), the time it sat queued and the time it was
-- parked; the ending statements add to them in the transaction that ends a segment.
-- Finished runs are folded into per task, per environment, per day rollups by the
-- scheduler, behind a watermark, so the rollups outlive the runs they came from.
ALTER TABLE runs ADD COLUMN active_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN queued_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN waited_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
-- (runs_finished, an index of finished runs, went in 0019_drop_runs_finished.)

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

-- Usage, second part (migrations/0015_usage_outbox, 0019_drop_runs_finished).
-- Finished runs reach the rollups through an outbox: each statement that finishes runs
-- adds one row naming them, in its transaction; the fold deletes what it folds in the
-- transaction that writes the rollups (usage_state.outbox = 1: the fold reads it).
CREATE TABLE usage_outbox (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_ids TEXT NOT NULL                  -- JSON list of run ids
);
ALTER TABLE usage_state ADD COLUMN outbox INTEGER NOT NULL DEFAULT 0;
UPDATE usage_state SET outbox = 1 WHERE name = 'rollup';
-- Each attempt's active time, on the event that ends a failed, retried, timed-out,
-- cancelled or lost attempt (a run's last attempt has the rest of runs.active_seconds).
ALTER TABLE run_events ADD COLUMN active_seconds DOUBLE PRECISION;
-- Alerts raised once per key (a usage spike once per task and period).
CREATE TABLE alert_once (
    env TEXT NOT NULL,
    event TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, event, key)
);

-- Retention: how long finished runs are kept, per environment (task_id '') and per task
-- (migrations/0012_retention). days NULL keeps them for ever.
CREATE TABLE retention_policies (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,                 -- '' for the environment's policy
    days DOUBLE PRECISION,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, task_id)
);
CREATE INDEX waitpoints_run ON waitpoints (run_id) WHERE run_id IS NOT NULL;

-- Version 9 (migrations/0009_versions): task code versions (issue 19). A run locks to the version of the worker
-- that starts its first attempt (or to the one its trigger pinned, or its parent's for
-- a child it waits on); from then on only workers of that version claim it (C11).
-- NULL: not locked yet, the environment's current version takes it.
ALTER TABLE runs ADD COLUMN version TEXT;
ALTER TABLE workers ADD COLUMN version TEXT NOT NULL DEFAULT '';
-- 1: serves only runs locked to its version, claims no new run (outlast worker --drain).
ALTER TABLE workers ADD COLUMN draining INTEGER NOT NULL DEFAULT 0;
-- Every version a serving (not draining) worker registered, first time first: the
-- newest is the environment's current version unless an operator pinned one.
CREATE TABLE versions (
    env TEXT NOT NULL,
    version TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (env, version)
);
-- outlast versions promote V: new runs of the environment go to V until another promote.
CREATE TABLE version_pins (
    env TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    pinned_at DOUBLE PRECISION NOT NULL
);

-- Version 14 (migrations/0014_webhooks):
-- Incoming webhooks (issue 20, part 6): endpoints at /hooks/<id> that verify a provider's
-- signature and publish an event, and the deliveries they accepted. A refused request
-- writes nothing here. Secrets are sealed (Fernet, outlast/_secret_box.py): HMAC needs
-- the plaintext, so they cannot be hashed; fingerprints are keyed digests for display.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,                   -- the public, unguessable part of the URL
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    scheme TEXT NOT NULL,                  -- stripe | github | standard | hmac-sha256
    event TEXT NOT NULL,                   -- the event name template, e.g. stripe.{type}
    options TEXT NOT NULL,                 -- JSON: tolerance, header, encoding, prefix
    secret TEXT NOT NULL,                  -- sealed
    fingerprint TEXT NOT NULL,
    previous_secret TEXT,                  -- sealed; valid until previous_until
    previous_fingerprint TEXT,
    previous_until DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    rotated_at DOUBLE PRECISION
);
CREATE UNIQUE INDEX webhook_endpoints_name ON webhook_endpoints (env, name);

-- One accepted request, written in the transaction that published its event: the
-- provider's delivery id (a redelivery is recorded again, with duplicate = 1).
-- Kept for the event retention (OUTLAST_EVENT_RETENTION_SECONDS).
CREATE TABLE webhook_deliveries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    env TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    duplicate INTEGER NOT NULL DEFAULT 0,
    run_ids TEXT NOT NULL,                 -- JSON list
    received_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (env, endpoint_id, seq);
-- Each accepted request prunes its endpoint's deliveries older than the event retention.
CREATE INDEX webhook_deliveries_age ON webhook_deliveries (env, endpoint_id, received_at);

-- cancel_on's match keys of each run (0016_event_fast_paths): an event cancels by index.
CREATE TABLE run_cancel_keys (
    env TEXT NOT NULL,
    task_id TEXT NOT NULL,
    path TEXT NOT NULL,
    value TEXT NOT NULL,
    run_id TEXT NOT NULL
);
CREATE INDEX run_cancel_keys_match ON run_cancel_keys (env, task_id, path, value);
CREATE INDEX run_cancel_keys_run ON run_cancel_keys (run_id);
-- migrations/0018_run_groups: debounce and batch (issue 20, part 5).
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
-- migrations/0021_worker_offers: start latency (issue 18).
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
-- migrations/0022_task_versions: SQLite's counter of changes to an environment's task rows
-- (its subscriber fingerprint, kept by triggers there); PostgreSQL hashes the task rows
-- (ev_tasks_version) and keeps no rows here.
CREATE TABLE task_versions (
    env TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
