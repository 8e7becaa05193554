-- Several nodes on one store: each daemon's heartbeat, trunk ownership by
-- lease, lease generations (fencing) on campaign contacts, and the dialog
-- state a survivor needs to end a dead node's calls with BYE.

-- The expired-lease query compares lease_until with a time: it was TEXT
-- here (the SQLite form's type), so every recovery pass failed with
-- "operator does not exist: text < timestamp with time zone". The stored
-- text is what PostgreSQL printed for a timestamptz, so it casts back.
ALTER TABLE campaign_contacts
    ALTER COLUMN lease_until TYPE TIMESTAMPTZ USING lease_until::timestamptz;

-- Bumped by every claim and every take-over: the fencing token. The
-- attempt keeps the generation it was claimed under; a write that carries
-- an older one (a node presumed dead that came back) changes nothing.
ALTER TABLE campaign_contacts ADD COLUMN lease_gen BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_attempts ADD COLUMN lease_gen BIGINT NOT NULL DEFAULT 0;

-- What ending the call needs once its node is gone (RFC 3261 §12.2.1.1):
-- Call-ID, tags, CSeq, route set, remote target, transport, as JSON.
ALTER TABLE calls ADD COLUMN dialog TEXT;

-- One row per daemon, written every heartbeat. A node whose heartbeat is
-- older than the configured grace, or that stopped, is dead.
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    sip_address TEXT,
    api_address TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    active_calls BIGINT NOT NULL DEFAULT 0,
    draining BOOLEAN NOT NULL DEFAULT FALSE,
    stopped_at TIMESTAMPTZ
);

-- Which node runs each trunk's registration and OPTIONS probe. The owner
-- renews `lease_until`; once it passes, another node takes the trunk and
-- `generation` grows.
CREATE TABLE trunk_leases (
    trunk TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    generation BIGINT NOT NULL,
    acquired_at TIMESTAMPTZ NOT NULL
);
