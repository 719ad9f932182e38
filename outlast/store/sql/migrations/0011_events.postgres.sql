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
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE UNIQUE INDEX events_dedup ON events (env, id) WHERE dedup_active = 1;
CREATE INDEX events_env_seq ON events (env, seq);
CREATE INDEX events_env_name ON events (env, name, seq);
CREATE INDEX events_env_id ON events (env, id, seq);
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
