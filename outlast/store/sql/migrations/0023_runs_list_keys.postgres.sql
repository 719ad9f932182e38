-- outlast: expand
-- The run lists' indexes with a narrower key (issue 18, bytes per finished run): the
-- id's 10 time digits and 2 random ones, substr(id, 5, 12), in place of the whole id. Run
-- ids are "run_" and 26 digits, so (key, id) order is id order; the lists order by both
-- and bound their pages by both (outlast/store/_rows.py ID_KEY). An entry is 14 bytes
-- narrower: on PostgreSQL 59 -> 41 and 68 -> 50 bytes a finished run after VACUUM.
-- runs_env_id and runs_env_task, which an older release's lists (ORDER BY id) need, go in
-- the contract migration drop_runs_list_ids, once no older release runs.
CREATE INDEX runs_env_idp ON runs (env, substr(id, 5, 12));
CREATE INDEX runs_env_task_idp ON runs (env, task_id, substr(id, 5, 12));
