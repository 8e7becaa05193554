-- Webhook outbox, SQLite form. Never edit once released: add a migration.
-- Same tables and columns as the PostgreSQL form; times are RFC 3339 UTC text.

-- A rotated secret stays valid (and signs too) until the time beside it.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret_expires_at TEXT;

-- How many events a call has emitted: the per-call sequence of its events.
ALTER TABLE calls ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;

-- The outbox: one row per event, written in the transaction of the state
-- change that caused it. `seq` orders the live stream; `payload` is the JSON
-- body exactly as it is signed and delivered, on every attempt and replay.
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL,
    api_version TEXT NOT NULL,
    call_id TEXT,
    call_seq INTEGER,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX events_created ON events (created_at);
CREATE UNIQUE INDEX events_call_seq ON events (call_id, call_seq);

-- One row per event and endpoint. A worker owns a row while `lease_until`
-- is in the future; `retry_step` indexes the backoff schedule and restarts
-- on replay, `attempts` counts every attempt ever made; `retry_until` is set
-- by the first attempt of a run (cleared on replay) and ends the retries.
CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    retry_step INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    retry_until TEXT,
    lease_until TEXT,
    lease_token TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, created_at);
CREATE INDEX webhook_deliveries_lease ON webhook_deliveries (lease_token);

-- Every attempt: what the endpoint answered, how long it took, what we decided.
CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    status_code INTEGER,
    latency_ms INTEGER NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('success', 'retry', 'fail')),
    reason TEXT NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, attempt);
