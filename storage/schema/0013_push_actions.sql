-- What each local user's push rules said of an event they can see: written in the event's
-- own transaction, so a crash loses no notification count. Only events whose actions
-- notify or highlight have a row. `thread_id` is "main" or the event's thread root.
CREATE TABLE event_push_actions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    thread_id TEXT NOT NULL,
    notify BOOLEAN NOT NULL,
    highlight BOOLEAN NOT NULL,
    -- The matching rule's actions, as JSON.
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, event_id)
);
CREATE INDEX event_push_actions_user_room ON event_push_actions (user_id, room_id, stream_ordering);
CREATE INDEX event_push_actions_user_stream ON event_push_actions (user_id, stream_ordering);

-- Sending an event marks what came before it read (spec: "Marking notifications as read"):
-- the position of each local user's latest event per room and thread.
CREATE TABLE push_sent_positions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);
