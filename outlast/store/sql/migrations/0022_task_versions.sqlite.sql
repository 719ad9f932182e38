-- outlast: expand
-- A counter per environment that every change to its task rows bumps (by the triggers
-- below, whichever release writes them): SQLite's fingerprint of the subscribers a
-- publish planned with (ev_tasks_version, ev_insert_alone) is one row's lookup, where it
-- hashed every task row's text on every publish (about 40 µs with six tasks, growing
-- with their number). The triggers fire on the columns that fingerprint covered.
CREATE TABLE task_versions (
    env TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
INSERT INTO task_versions (env, version) SELECT DISTINCT env, 1 FROM tasks;
CREATE TRIGGER tasks_version_insert AFTER INSERT ON tasks BEGIN
    INSERT INTO task_versions (env, version) VALUES (NEW.env, 1)
    ON CONFLICT (env) DO UPDATE SET version = version + 1; END;
CREATE TRIGGER tasks_version_update
AFTER UPDATE OF env, id, queue, payload_schema, spec, updated_at ON tasks BEGIN
    INSERT INTO task_versions (env, version) VALUES (OLD.env, 1), (NEW.env, 1)
    ON CONFLICT (env) DO UPDATE SET version = version + 1; END;
CREATE TRIGGER tasks_version_delete AFTER DELETE ON tasks BEGIN
    INSERT INTO task_versions (env, version) VALUES (OLD.env, 1)
    ON CONFLICT (env) DO UPDATE SET version = version + 1; END;
