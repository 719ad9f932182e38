-- outlast: contract
-- events_env_id goes, replaced by events_dedup and events_released (0026_events_released),
-- and events.seq becomes a plain rowid: AUTOINCREMENT wrote sqlite_sequence's row in every
-- publish (a page of the WAL per event). A plain rowid would reuse the highest seq once
-- its row is deleted, so this release's pruner keeps the newest row, emptied (a tombstone
-- in environment ''), and this migration carries the high-water mark over as such a row.
-- A contract step: an older release's pruner deletes the newest row, and its ev_get
-- (env, id ORDER BY seq DESC) would read every event of an environment.
-- The table is rebuilt (SQLite cannot drop AUTOINCREMENT in place): renamed away with its
-- indexes, created as a fresh database has it, copied, dropped.
ALTER TABLE events RENAME TO events_autoincrement;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    env TEXT NOT NULL,
    id TEXT NOT NULL,                      -- the publisher's id (or a generated evt_...)
    name TEXT NOT NULL,
    data TEXT NOT NULL,                    -- JSON
    created_at REAL NOT NULL,
    dedup_until REAL NOT NULL,
    dedup_active INTEGER NOT NULL DEFAULT 1,
    expires_at REAL NOT NULL,
    fanout TEXT                            -- JSON: what its publish did (0015)
);
INSERT INTO events (seq, env, id, name, data, created_at, dedup_until, dedup_active,
                    expires_at, fanout)
SELECT seq, env, id, name, data, created_at, dedup_until, dedup_active, expires_at, fanout
FROM events_autoincrement ORDER BY seq;
INSERT INTO events (seq, env, id, name, data, created_at, dedup_until, dedup_active,
                    expires_at, fanout)
SELECT s.seq, '', '', '', 'null', 0, 0, 0, 0, NULL FROM sqlite_sequence s
WHERE s.name = 'events_autoincrement'
  AND s.seq > (SELECT COALESCE(MAX(seq), 0) FROM events);
DROP TABLE events_autoincrement;
CREATE UNIQUE INDEX events_dedup ON events (env, id) WHERE dedup_active = 1;
CREATE INDEX events_env_seq ON events (env, seq);
CREATE INDEX events_env_name ON events (env, name, seq);
CREATE INDEX events_released ON events (env, id, seq) WHERE dedup_active = 0;
CREATE INDEX events_expiry ON events (expires_at);
