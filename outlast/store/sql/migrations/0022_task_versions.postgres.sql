-- outlast: expand
-- SQLite's counter of changes to an environment's task rows (its subscriber fingerprint,
-- kept by triggers there: see 0022_task_versions.sqlite.sql), made so both backends have
-- one schema. PostgreSQL's fingerprint hashes the task rows in the publish's statement
-- (ev_tasks_version, ev_publish_alone) and keeps no rows here.
CREATE TABLE task_versions (
    env TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
