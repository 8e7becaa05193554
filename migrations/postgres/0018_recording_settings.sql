-- Recording settings on phone numbers and campaigns (issue 18): the JSON
-- object the API takes (`{"enabled": true, "channels": "dual"}`), NULL when
-- the level says nothing. A call's settings are merged call > campaign >
-- number > agent, field by field.
ALTER TABLE phone_numbers ADD COLUMN recording TEXT;
ALTER TABLE campaigns ADD COLUMN recording TEXT;
