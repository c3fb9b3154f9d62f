-- Server-side search (client-server API "Server Side Search"): one row per timeline event
-- with searchable text (`content.body` of m.room.message, `content.name` of m.room.name,
-- `content.topic` and the text/plain `m.topic` of m.room.topic), written with the event and
-- deleted when a redaction of it (in its room) is stored or the event is purged.
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    -- content.body, content.name or content.topic: the spec's search `keys`.
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    -- English stemming and stop words: "Meetings" finds "meeting", "the" finds nothing.
    vector tsvector GENERATED ALWAYS AS (to_tsvector('english', value)) STORED,
    topological_ordering BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id, stream_ordering);
-- Events stored before this migration, as the persister would have indexed them (the
-- text/plain `m.topic` of topics without `content.topic` is left to new events). JSON with
-- an escaped NUL cannot become jsonb, and NUL cannot be text: such events are left out.
INSERT INTO event_search (event_id, room_id, sender, type, key, value, topological_ordering,
    stream_ordering, origin_server_ts)
SELECT event_id, room_id, sender, type, key, raw #>> '{}', topological_ordering,
    stream_ordering, origin_server_ts
FROM (
    SELECT e.event_id, e.room_id, e.sender, e.type, e.topological_ordering, e.stream_ordering,
        e.origin_server_ts,
        CASE e.type WHEN 'm.room.message' THEN 'content.body'
            WHEN 'm.room.name' THEN 'content.name' ELSE 'content.topic' END AS key,
        e.json::jsonb -> 'content' -> (CASE e.type WHEN 'm.room.message' THEN 'body'
            WHEN 'm.room.name' THEN 'name' ELSE 'topic' END) AS raw
    FROM events e
    WHERE e.outlier = FALSE AND e.rejected_reason IS NULL
        AND strpos(e.json, '\u0000') = 0
        AND ((e.type = 'm.room.message' AND e.state_key IS NULL)
            OR (e.type IN ('m.room.name', 'm.room.topic') AND e.state_key = ''))
        AND NOT EXISTS (SELECT 1 FROM redactions r JOIN events re ON re.event_id = r.event_id
            WHERE r.redacts = e.event_id AND re.room_id = e.room_id)
) AS found
WHERE jsonb_typeof(raw) = 'string';
