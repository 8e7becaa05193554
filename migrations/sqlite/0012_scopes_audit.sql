-- Scopes on API keys: every key made before scopes existed could do
-- everything, so it keeps doing so as `admin`.
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT 'admin'
    CHECK (scope IN ('admin', 'calls', 'read'));

-- The audit log: one row per create, change or delete made through the
-- API. The key is named by id, never by secret; rows are only appended.
CREATE TABLE audit_events (
    id TEXT PRIMARY KEY,
    key_id TEXT,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT,
    method TEXT NOT NULL,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    client_addr TEXT,
    request_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX audit_events_key ON audit_events (key_id, id);
CREATE INDEX audit_events_object ON audit_events (object_id, id);
