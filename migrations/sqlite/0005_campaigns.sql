-- Outbound campaigns, SQLite form. Never edit once released: add a migration.
-- Same tables and columns as the PostgreSQL form; times are RFC 3339 UTC text.

-- `trunks` is a JSON array of trunk ids tried in order; `schedule` and
-- `retry_policy` are JSON documents (see src/api/campaigns.rs).
CREATE TABLE campaigns (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents (id),
    caller_number TEXT NOT NULL,
    trunks TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('draft', 'running', 'paused', 'completed', 'canceled')),
    schedule TEXT NOT NULL,
    max_concurrent_calls INTEGER NOT NULL,
    calls_per_second REAL NOT NULL,
    retry_policy TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX campaigns_status ON campaigns (status);

-- One row per number in a campaign. `state`: pending (waiting for its next
-- attempt at `next_attempt_at`), dialing (an attempt in flight, leased to
-- `lease_owner` until `lease_until`), completed, exhausted, opted_out, dnc
-- (on the do-not-call list), expired (the schedule ended), canceled.
-- `timezone` is the contact's own zone or the one its number pins down.
CREATE TABLE campaign_contacts (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    number TEXT NOT NULL,
    timezone TEXT,
    variables TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'dialing', 'completed', 'exhausted',
        'opted_out', 'dnc', 'expired', 'canceled')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_outcome TEXT,
    lease_owner TEXT,
    lease_until TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (campaign_id, number)
);
CREATE INDEX campaign_contacts_due ON campaign_contacts (campaign_id, state, next_attempt_at);

-- One row per attempt, written when the contact is claimed and before the
-- call is placed, with the call id chosen up front: after a crash the call
-- layer says whether that call exists, so an attempt is never placed twice
-- and never lost. `outcome` is NULL while the attempt is in flight.
CREATE TABLE campaign_attempts (
    id TEXT PRIMARY KEY,
    campaign_id TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    contact_id TEXT NOT NULL REFERENCES campaign_contacts (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    call_id TEXT NOT NULL UNIQUE,
    trunk TEXT,
    outcome TEXT,
    duration_ms INTEGER,
    next_attempt_at TEXT,
    ended_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (contact_id, attempt)
);
CREATE INDEX campaign_attempts_campaign ON campaign_attempts (campaign_id, outcome);

-- The global do-not-call list, checked before every dial.
CREATE TABLE do_not_call (
    id TEXT PRIMARY KEY,
    number TEXT NOT NULL UNIQUE,
    reason TEXT,
    source TEXT NOT NULL CHECK (source IN ('api', 'import', 'opt_out')),
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
