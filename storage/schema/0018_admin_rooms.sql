-- The admin API's rooms part: rooms an admin blocked. Local users cannot join, knock on or
-- be invited to a blocked room (403). A room can be blocked before this server knows it, so
-- no reference to `rooms`; a room's delete keeps its block.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    -- The admin who blocked it.
    user_id TEXT NOT NULL,
    ts BIGINT NOT NULL
);
