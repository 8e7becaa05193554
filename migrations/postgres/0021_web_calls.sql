-- Browser web calls, PostgreSQL form. Never edit once released: add a
-- migration. Same columns as the SQLite form.

-- Publishable keys (`al_pk_...`): safe to embed in a web page, they can
-- only start web calls for the agents they list, from the origins they
-- list. Stored as the SHA-256 hash plus the visible prefix, like API keys.
-- `agent_ids` and `origins` are JSON arrays of strings.
CREATE TABLE publishable_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    agent_ids TEXT NOT NULL,
    origins TEXT NOT NULL,
    rate_limit_per_minute BIGINT,
    max_concurrent_calls BIGINT,
    revoked_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX publishable_keys_prefix ON publishable_keys (prefix);

-- One row per web call: the key that started it, the page's origin, and
-- the single-use media token (its hash), valid until `expires_at_ms`
-- (milliseconds since the epoch) and spent once `used_at` is set.
CREATE TABLE web_calls (
    call_id TEXT PRIMARY KEY REFERENCES calls (id) ON DELETE CASCADE,
    key_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    token_hash TEXT NOT NULL,
    expires_at_ms BIGINT NOT NULL,
    used_at TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX web_calls_key ON web_calls (key_id);

-- Calls gain the direction `web`.
ALTER TABLE calls DROP CONSTRAINT calls_direction_check;
ALTER TABLE calls ADD CONSTRAINT calls_direction_check
    CHECK (direction IN ('inbound', 'outbound', 'web'));
