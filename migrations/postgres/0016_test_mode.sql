-- Test mode, PostgreSQL form. Never edit once released: add a migration.
-- Same columns as the SQLite form.
--
-- Every object an API key creates carries the key's mode: TRUE (live) or
-- FALSE (test, an `al_test_` key). Keys see only objects of their own mode;
-- rows written before this migration are live. Events carry the mode of the
-- object they are about, and are delivered only to endpoints of that mode.
ALTER TABLE calls ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
-- The API key that placed the call (`POST /v1/calls`): its daily call and
-- minute caps are counted here, so they hold across nodes.
ALTER TABLE calls ADD COLUMN api_key_id TEXT;
ALTER TABLE agents ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE phone_numbers ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE campaigns ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE webhook_endpoints ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
ALTER TABLE events ADD COLUMN livemode BOOLEAN NOT NULL DEFAULT TRUE;
CREATE INDEX calls_api_key_created ON calls (api_key_id, created_at);
CREATE INDEX calls_livemode_created ON calls (livemode, created_at);

-- Who made an audited change: 'api' (a request, with its key) or 'cli'
-- (`agentline keys create` and `keys revoke`, on the operator's machine).
ALTER TABLE audit_events ADD COLUMN actor TEXT NOT NULL DEFAULT 'api';
