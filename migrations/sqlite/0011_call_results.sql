-- Issue 17: a call's structured result, filled after the call from its
-- transcript (JSON text: status, data, success, ...; NULL until analyzed
-- or when its agent defines no analysis), endpoints that want the
-- transcript in call.ended, and the indexes the analytics and the call
-- filters read by.
ALTER TABLE calls ADD COLUMN analysis TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN include_transcript INTEGER NOT NULL DEFAULT 0;
CREATE INDEX calls_campaign ON calls (campaign_id, created_at);
CREATE INDEX calls_end_reason ON calls (end_reason, created_at);
