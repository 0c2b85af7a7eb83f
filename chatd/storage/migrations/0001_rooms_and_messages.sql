-- Rooms, their members, messages with a per-room gap-free seq, read
-- pointers and reactions.  Times are epoch milliseconds (UTC).
CREATE TABLE rooms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    type        TEXT NOT NULL CHECK (type IN ('public', 'private')),
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE room_members (
    room_id        TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id        TEXT NOT NULL,
    joined_at      BIGINT NOT NULL,
    last_read_seq  BIGINT NOT NULL DEFAULT 0,
    last_read_id   TEXT,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX room_members_by_user ON room_members (user_id);

CREATE TABLE messages (
    id         TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    seq        BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    content    TEXT NOT NULL,
    temp_id    TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (room_id, seq)
);

CREATE TABLE reactions (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    user_id    TEXT NOT NULL,
    reaction   TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (message_id, user_id, reaction)
);
