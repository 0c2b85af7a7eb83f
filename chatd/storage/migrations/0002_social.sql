-- The social layer: known users (and when they were last seen), the
-- friend graph (both directions stored), pending friend requests,
-- notifications kept until acknowledged, and direct-message rooms.
CREATE TABLE users (
    user_id    TEXT PRIMARY KEY,
    name       TEXT,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT
);

CREATE TABLE friendships (
    user_id    TEXT NOT NULL,
    friend_id  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, friend_id)
);

CREATE TABLE friend_requests (
    from_user  TEXT NOT NULL,
    to_user    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (from_user, to_user)
);
CREATE INDEX friend_requests_to ON friend_requests (to_user);

CREATE TABLE notifications (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    title      TEXT NOT NULL,
    message    TEXT NOT NULL,
    data       TEXT,
    created_at BIGINT NOT NULL,
    read_at    BIGINT
);
CREATE INDEX notifications_unread ON notifications (user_id, read_at, created_at);

ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT 'room';
