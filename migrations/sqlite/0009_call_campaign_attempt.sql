-- The campaign attempt a call is, in columns of its own: until now the
-- campaign, contact and attempt number were read back from the call's
-- metadata JSON. Calls placed before keep that metadata and get the
-- columns from it.
ALTER TABLE calls ADD COLUMN campaign_id TEXT;
ALTER TABLE calls ADD COLUMN contact_id TEXT;
ALTER TABLE calls ADD COLUMN attempt INTEGER;
UPDATE calls
   SET campaign_id = json_extract(metadata, '$.campaign_id'),
       contact_id = json_extract(metadata, '$.contact_id'),
       attempt = json_extract(metadata, '$.attempt')
 WHERE json_valid(metadata) AND json_extract(metadata, '$.campaign_id') IS NOT NULL;
