-- Send-to-device messaging: messages waiting for local devices, the stream's
-- positions, idempotency of PUT /sendToDevice, and inbound m.direct_to_device dedupe.

-- Messages waiting for a device, until its next /sync acknowledges them. All the messages of
-- one request (or one inbound EDU) share a stream position; a device gets at most one each.
CREATE TABLE device_inbox (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    stream_id BIGINT NOT NULL,
    -- {"sender", "type", "content"}: the event as /sync shows it.
    message_json TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, stream_id)
);

-- Every to-device position written, so that at start-up the stream resumes after the highest
-- one: delivered messages are deleted, so the inbox alone cannot tell, and a reused position
-- would be taken as acknowledged by a client whose token is already past it. Append-only
-- (concurrent writers never touch the same row); all but the highest are pruned.
CREATE TABLE device_inbox_positions (
    stream_id BIGINT PRIMARY KEY
);

-- PUT /sendToDevice requests already handled, per sending device (spec: "Transaction
-- identifiers"); a retry changes nothing. Forgotten after a day.
CREATE TABLE device_inbox_client_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    inserted_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, event_type, txn_id)
);
CREATE INDEX device_inbox_client_txns_ts ON device_inbox_client_txns (inserted_ts);

-- m.direct_to_device EDUs already received, by origin and message_id (a server may send an
-- EDU again in a new transaction). Forgotten after a day.
CREATE TABLE device_inbox_federation (
    origin TEXT NOT NULL,
    message_id TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, message_id)
);
CREATE INDEX device_inbox_federation_ts ON device_inbox_federation (received_ts);
