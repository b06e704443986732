-- mcpproxy-oauth token store, schema version 5.
-- `recent_flows` (logs flows, the API's flow lists) reads the newest flows first; without an
-- index on started_at it sorted the whole table every time. Retention (by age and by count)
-- finds the rows to delete through the same index.
CREATE INDEX oauth_flows_by_start ON oauth_flows (started_at);
