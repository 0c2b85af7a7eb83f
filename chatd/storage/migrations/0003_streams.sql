-- Live streams: who hosts them and whether they are live.  Live chat and
-- reactions are not stored (see docs/protocol.md).
CREATE TABLE streams (
    id         TEXT PRIMARY KEY,
    host_id    TEXT NOT NULL,
    title      TEXT NOT NULL DEFAULT '',
    status     TEXT NOT NULL CHECK (status IN ('idle', 'started', 'ended')),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
