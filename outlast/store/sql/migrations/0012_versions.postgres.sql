-- Version 9: task code versions (issue 19). A run locks to the version of the worker
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
