-- Push actions as one row per event, and unread counts kept per (user, room, thread) in a
-- summary brought up to date a batch of events at a time ("rotation"), instead of one row
-- per (user, event): a message in a room of a thousand local members wrote a thousand rows.
-- 0015_push_summary.postgresql.sql is the same but for the string functions that move the
-- rows of 0013's per-user table into the new shape.
ALTER TABLE event_push_actions RENAME TO event_push_actions_0013;

-- What each local user's push rules said of an event, for the users whose actions notify or
-- highlight, written in the event's own transaction. `groups`: the users grouped by outcome,
-- one line per group: notify and highlight as 0/1 digits, the actions' JSON text, a tab,
-- the user IDs separated by spaces (rows staged by 0013 hold its JSON object instead,
-- which readers still understand).
-- `highlight`: whether any group highlights (GET /notifications?only=highlight reads only
-- those rows). Never updated once written.
CREATE TABLE event_push_actions (
    stream_ordering BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    groups TEXT NOT NULL,
    highlight BOOLEAN NOT NULL
);
-- Counting a room's events after a read position; listing a user's rooms' notifications.
CREATE INDEX event_push_actions_room ON event_push_actions (room_id, stream_ordering);

-- The events of event_push_actions not yet counted in event_push_summary, written with the
-- event; rotation deletes them as it counts them (the delete is its claim).
CREATE TABLE event_push_rotation_queue (
    stream_ordering BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL
);

-- A user's unread counts in one thread ("main" or a thread root) of one room, over the
-- rotated events: the notifying and highlighting actions of those after `read_position`
-- (the later of the unthreaded and the thread's read position when they were counted).
-- `stream_ordering` is the latest rotated event counted for them here: once they have read
-- past it, the row counts nothing; a read position other than `read_position` below it means
-- the row is stale and is counted again from event_push_actions.
CREATE TABLE event_push_summary (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    notif_count BIGINT NOT NULL,
    highlight_count BIGINT NOT NULL,
    read_position BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, thread_id)
);

-- 0013's staged events keep their JSON (the older form); `highlight` is TRUE for them, a
-- filter readers check against each user's own actions anyway.
INSERT INTO event_push_actions (stream_ordering, event_id, room_id, thread_id, ts, groups,
                                highlight)
SELECT stream_ordering, event_id, room_id, thread_id, ts, users, TRUE
FROM event_push_actions_staging;

-- 0013's per-user rows, one row per event, users grouped by their actions.
INSERT INTO event_push_actions (stream_ordering, event_id, room_id, thread_id, ts, groups,
                                highlight)
SELECT stream_ordering, MIN(event_id), MIN(room_id), MIN(thread_id), MIN(ts),
       group_concat(grp, char(10)), MAX(highlight)
FROM (
    SELECT stream_ordering, event_id, room_id, thread_id, ts, highlight,
           CAST(notify AS INTEGER) || CAST(highlight AS INTEGER) || actions || char(9)
           || group_concat(user_id, ' ') AS grp
    FROM event_push_actions_0013
    GROUP BY stream_ordering, event_id, room_id, thread_id, ts, actions, notify, highlight
)
GROUP BY stream_ordering;

-- Nothing is counted yet: every event waits for rotation (the first reader does it).
INSERT INTO event_push_rotation_queue (stream_ordering, room_id)
SELECT stream_ordering, room_id FROM event_push_actions;

DROP TABLE event_push_actions_0013;
DROP TABLE event_push_actions_staging;
