-- Version 4: bulk actions (cancel or replay every run matching a filter), resumable. A
-- bulk action walks the matching runs in id order up to bound_id (the newest run when it
-- was created, so the runs it replays are never part of its own set); each batch moves
-- the cursor in the same transaction as its cancels or replays, so a resumed action
-- continues after the last committed batch and never acts on a run twice.
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
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    finished_at REAL
);
CREATE INDEX bulk_actions_env ON bulk_actions (env, id);

-- A token's completion buttons in the dashboard, JSON {label: data} (NULL: the default
-- Approve {"approved": true} / Reject {"approved": false}), set by the task that created
-- it (wait.create_token(buttons=...)) so each button sends what the task checks.
ALTER TABLE waitpoints ADD COLUMN buttons TEXT;
