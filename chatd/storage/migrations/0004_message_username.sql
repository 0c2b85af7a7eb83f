-- The sender's display name on each message (the identity's `name` when
-- it sent it), so history and `since` recovery carry the `username` the
-- live push carried.  Nullable: older messages, and senders without a
-- name, have none.  Adding a nullable column without a default rewrites
-- no rows on either engine.
ALTER TABLE messages ADD COLUMN username TEXT;
