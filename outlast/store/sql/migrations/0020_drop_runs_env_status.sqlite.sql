-- outlast: contract
-- The full (env, status, id) index, replaced by runs_env_status_live (migration
-- runs_status_index_live). A contract step: an older release's queries bind statuses as
-- parameters, and would lose their index for lists and prunes by status.
DROP INDEX runs_env_status;
