-- The campaign attempt a call is, in columns of its own: until now the
-- campaign, contact and attempt number were read back from the call's
-- metadata JSON. Calls placed before keep that metadata and get the
-- columns from it.
ALTER TABLE calls ADD COLUMN campaign_id TEXT;
ALTER TABLE calls ADD COLUMN contact_id TEXT;
ALTER TABLE calls ADD COLUMN attempt BIGINT;
UPDATE calls
   SET campaign_id = metadata::jsonb ->> 'campaign_id',
       contact_id = metadata::jsonb ->> 'contact_id',
       attempt = (metadata::jsonb ->> 'attempt')::BIGINT
 WHERE metadata LIKE '{%"campaign_id"%';
