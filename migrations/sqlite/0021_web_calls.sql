-- Browser web calls, SQLite form. Never edit once released: add a
-- migration. Same columns as the PostgreSQL form.

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
    rate_limit_per_minute INTEGER,
    max_concurrent_calls INTEGER,
    revoked_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
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
    expires_at_ms INTEGER NOT NULL,
    used_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX web_calls_key ON web_calls (key_id);

-- Calls gain the direction `web`. SQLite cannot alter a CHECK constraint;
-- widening one changes no stored row, which is the case the SQLite
-- documentation allows editing the schema text for (lang_altertable.html,
-- "making other kinds of table schema changes"). The replace touches only
-- the direction's CHECK, so columns other migrations added stay.
PRAGMA writable_schema = ON;
UPDATE sqlite_master
   SET sql = replace(sql,
       'CHECK (direction IN (''inbound'', ''outbound''))',
       'CHECK (direction IN (''inbound'', ''outbound'', ''web''))')
 WHERE type = 'table' AND name = 'calls';
PRAGMA writable_schema = OFF;
