-- outlast: contract
-- events_env_id, replaced by events_dedup and events_released (0026_events_released). A
-- contract step: an older release's ev_get (env, id ORDER BY seq DESC) would read every
-- event of an environment without it.
DROP INDEX events_env_id;
