-- As 0013_push_actions.sql, with the push actions table WITHOUT ROWID: its primary key is
-- then the table itself, not an index beside it.
-- What each local user's push rules said of an event they can see, per user: only events
-- whose actions notify or highlight have a row. `thread_id` is "main" or the event's thread
-- root. Rows arrive from event_push_actions_staging, below.
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
    -- One B-tree to update per row: an event in a room of a thousand local members writes a
    -- thousand rows, each on the page of its user. Counts (one room, after a position) and
    -- the notifications list (newest first) both read a user's rows in stream order.
    PRIMARY KEY (user_id, stream_ordering)
) WITHOUT ROWID;

-- The same, one row per event, written in the event's own transaction (so a crash loses no
-- notification count): `users` is JSON, {"actions": [<actions JSON text>, ...], "users":
-- [[user_id, index into actions, notify, highlight], ...]}. Moved into event_push_actions
-- a batch of events at a time, so that a user's page of that table is written once per
-- batch rather than once per event of a busy room; readers move what is here first.
CREATE TABLE event_push_actions_staging (
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    users TEXT NOT NULL
);

-- Sending an event marks what came before it read (spec: "Marking notifications as read"):
-- the position of each local user's latest event per room and thread.
CREATE TABLE push_sent_positions (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);
