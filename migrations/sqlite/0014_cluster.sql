-- Several nodes on one store (the PostgreSQL form is the one that matters;
-- the same tables and columns here): each daemon's heartbeat, trunk
-- ownership by lease, lease generations (fencing) on campaign contacts,
-- and the dialog state needed to end a call with BYE after its node died.
-- SQLite keeps times as text, so lease_until stays TEXT.

ALTER TABLE campaign_contacts ADD COLUMN lease_gen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_attempts ADD COLUMN lease_gen INTEGER NOT NULL DEFAULT 0;

-- Call-ID, tags, CSeq, route set, remote target, transport, as JSON.
ALTER TABLE calls ADD COLUMN dialog TEXT;

CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    sip_address TEXT,
    api_address TEXT,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    active_calls INTEGER NOT NULL DEFAULT 0,
    draining BOOLEAN NOT NULL DEFAULT 0,
    stopped_at TEXT
);

CREATE TABLE trunk_leases (
    trunk TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until TEXT NOT NULL,
    generation INTEGER NOT NULL,
    acquired_at TEXT NOT NULL
);
