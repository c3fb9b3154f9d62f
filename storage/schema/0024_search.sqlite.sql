-- Server-side search (client-server API "Server Side Search"): one row per timeline event
-- with searchable text (`content.body` of m.room.message, `content.name` of m.room.name,
-- `content.topic` and the text/plain `m.topic` of m.room.topic), written with the event and
-- deleted when a redaction of it (in its room) is stored or the event is purged.
-- `id` is the rowid of the FTS5 index below, which holds only the words (an external
-- content table: the text itself is read from here).
CREATE TABLE event_search (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    -- content.body, content.name or content.topic: the spec's search `keys`.
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    topological_ordering BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL
);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
-- Porter stemming over Unicode words, diacritics folded: "Meetings" finds "meeting".
CREATE VIRTUAL TABLE event_search_fts USING fts5(
    value, content='event_search', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
-- The index follows the table: the stores only ever insert and delete event_search rows.
CREATE TRIGGER event_search_insert AFTER INSERT ON event_search BEGIN
    INSERT INTO event_search_fts (rowid, value) VALUES (new.id, new.value); END;
CREATE TRIGGER event_search_delete AFTER DELETE ON event_search BEGIN
    INSERT INTO event_search_fts (event_search_fts, rowid, value)
    VALUES ('delete', old.id, old.value); END;
-- Events stored before this migration, as the persister would have indexed them (the
-- text/plain `m.topic` of topics without `content.topic` is left to new events).
INSERT INTO event_search (event_id, room_id, sender, type, key, value, topological_ordering,
    stream_ordering, origin_server_ts)
SELECT e.event_id, e.room_id, e.sender, e.type,
    CASE e.type WHEN 'm.room.message' THEN 'content.body'
        WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END,
    json_extract(e.json, CASE e.type WHEN 'm.room.message' THEN '$.content.body'
        WHEN 'm.room.name' THEN '$.content.name' ELSE '$.content.topic' END),
    e.topological_ordering, e.stream_ordering, e.origin_server_ts
FROM events e
WHERE e.outlier = 0 AND e.rejected_reason IS NULL
    AND ((e.type = 'm.room.message' AND e.state_key IS NULL
            AND json_type(e.json, '$.content.body') = 'text')
        OR (e.type = 'm.room.name' AND e.state_key = ''
            AND json_type(e.json, '$.content.name') = 'text')
        OR (e.type = 'm.room.topic' AND e.state_key = ''
            AND json_type(e.json, '$.content.topic') = 'text'))
    AND NOT EXISTS (SELECT 1 FROM redactions r JOIN events re ON re.event_id = r.event_id
        WHERE r.redacts = e.event_id AND re.room_id = e.room_id);
