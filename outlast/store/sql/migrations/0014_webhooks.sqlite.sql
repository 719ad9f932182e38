-- outlast: expand
-- Incoming webhooks (issue 20, part 6): endpoints at /hooks/<id> that verify a provider's
-- signature and publish an event, and the deliveries they accepted. A refused request
-- writes nothing here. Secrets are sealed (Fernet, outlast/_secret_box.py): HMAC needs
-- the plaintext, so they cannot be hashed; fingerprints are keyed digests for display.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,                   -- the public, unguessable part of the URL
    env TEXT NOT NULL,
    name TEXT NOT NULL,
    scheme TEXT NOT NULL,                  -- stripe | github | standard | hmac-sha256
    event TEXT NOT NULL,                   -- the event name template, e.g. stripe.{type}
    options TEXT NOT NULL,                 -- JSON: tolerance, header, encoding, prefix
    secret TEXT NOT NULL,                  -- sealed
    fingerprint TEXT NOT NULL,
    previous_secret TEXT,                  -- sealed; valid until previous_until
    previous_fingerprint TEXT,
    previous_until REAL,
    created_at REAL NOT NULL,
    rotated_at REAL
);
CREATE UNIQUE INDEX webhook_endpoints_name ON webhook_endpoints (env, name);

-- One accepted request, written in the transaction that published its event: the
-- provider's delivery id (a redelivery is recorded again, with duplicate = 1).
-- Kept for the event retention (OUTLAST_EVENT_RETENTION_SECONDS).
CREATE TABLE webhook_deliveries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    env TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_name TEXT NOT NULL,
    duplicate INTEGER NOT NULL DEFAULT 0,
    run_ids TEXT NOT NULL,                 -- JSON list
    received_at REAL NOT NULL
);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (env, endpoint_id, seq);
-- Each accepted request prunes its endpoint's deliveries older than the event retention.
CREATE INDEX webhook_deliveries_age ON webhook_deliveries (env, endpoint_id, received_at);
