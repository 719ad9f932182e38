-- outlast: expand
-- Usage (issue 24), second part.
-- 1. Finished runs reach the usage rollups through an outbox, not an index: each
--    statement that finishes runs adds one row naming them (one per commit batch), in its
--    own transaction; the scheduler's fold deletes the rows it folds in the transaction
--    that writes the rollups. A run is folded once whatever order commits land in, and
--    the hot path writes one small row per batch instead of an index entry per run.
--    Until the contract migration 0019_drop_runs_finished hands over (usage_state.outbox
--    = 1), the fold still reads runs_finished behind its watermark, as the release before
--    does, and the outbox is only trimmed.
CREATE TABLE usage_outbox (
    seq INTEGER PRIMARY KEY,
    run_ids TEXT NOT NULL                  -- JSON list of run ids
);
ALTER TABLE usage_state ADD COLUMN outbox INTEGER NOT NULL DEFAULT 0;
-- 2. Each attempt's active time (excluding parked waits and queued time), on the event
--    that ends a failed, retried, timed-out, cancelled or lost attempt; a run's last
--    attempt has the rest of runs.active_seconds. NULL on other events.
ALTER TABLE run_events ADD COLUMN active_seconds REAL;
-- 3. Alerts raised once per key (a usage spike once per task and period).
CREATE TABLE alert_once (
    env TEXT NOT NULL,
    event TEXT NOT NULL,
    key TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (env, event, key)
);
