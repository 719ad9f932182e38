-- outlast: contract
-- runs_env_id (env, id) and runs_env_task (env, task_id, id), replaced by runs_env_idp
-- and runs_env_task_idp (migration runs_list_keys). A contract step: an older release
-- lists runs ORDER BY id, which only these serve, and would read every run of an
-- environment (or task) per page without them.
DROP INDEX runs_env_id;
DROP INDEX runs_env_task;
