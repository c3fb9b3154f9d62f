-- Event relationships (client-server API "Forming relationships between events"): one row
-- per timeline event whose content has a well-formed `m.relates_to`, written with the event
-- and deleted when a redaction of it (in its room) is stored. Rows are kept for every
-- rel_type, known or not; which ones are aggregated is decided on read.
CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to_id TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    sender TEXT NOT NULL,
    -- `key` of an m.annotation (a reaction), NULL otherwise.
    aggregation_key TEXT,
    topological_ordering BIGINT NOT NULL,
    stream_ordering BIGINT NOT NULL
);
-- /relations/{eventId}/{relType}/{eventType} in history order.
CREATE INDEX event_relations_parent
    ON event_relations (relates_to_id, rel_type, type, topological_ordering, stream_ordering);
-- /relations/{eventId} (any rel_type) in history order.
CREATE INDEX event_relations_parent_order
    ON event_relations (relates_to_id, topological_ordering, stream_ordering);
-- /threads: a room's thread roots by their latest activity.
CREATE INDEX event_relations_room_rel
    ON event_relations (room_id, rel_type, topological_ordering, stream_ordering);
