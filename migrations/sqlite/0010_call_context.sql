-- Issue 17: every call knows whom it is for. The call's context (JSON
-- object: numbers, ids, the contact's variables, the metadata, chosen SIP
-- headers) and who chose its agent; a number's and a campaign's agent
-- webhook, asked for the agent of each call, and its signing secret.
ALTER TABLE calls ADD COLUMN context TEXT;
ALTER TABLE calls ADD COLUMN agent_source TEXT;
ALTER TABLE calls ADD COLUMN agent_source_error TEXT;
ALTER TABLE phone_numbers ADD COLUMN agent_webhook_url TEXT;
ALTER TABLE phone_numbers ADD COLUMN agent_webhook_secret TEXT;
ALTER TABLE campaigns ADD COLUMN agent_webhook_url TEXT;
ALTER TABLE campaigns ADD COLUMN agent_webhook_secret TEXT;
