-- Version 3: dashboard logins are kept on the server, so a logout ends one for good (a
-- signed cookie alone stayed valid after a logout until it expired). The cookie carries a
-- random session id; only its SHA-256 is stored.
CREATE TABLE dashboard_sessions (
    id_hash TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at);
