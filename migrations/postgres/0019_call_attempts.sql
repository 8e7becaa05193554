-- Trunk failover: each attempt of an outbound call on one trunk, in order.
-- A call that fails over keeps its id and row; this table lists what each
-- trunk did with it (or why it was skipped without an INVITE).
CREATE TABLE call_attempts (
    call_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    trunk TEXT NOT NULL,
    -- answered, failed (the trunk answered a final failure or nothing),
    -- or skipped (no INVITE sent: down, destination, cap, full)
    outcome TEXT NOT NULL,
    sip_code BIGINT,
    sip_call_id TEXT,
    reason TEXT,
    started_at TIMESTAMPTZ NOT NULL,
    ended_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (call_id, seq)
);
