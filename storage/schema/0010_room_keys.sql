-- Server-side key backups (spec: client-server API "Server-side key backups").

-- Each user's backup versions. Versions are numbered per user from 1 and never reused: a
-- deleted version keeps its row (deleted = TRUE, its keys removed) so the next one created
-- takes a higher number. The current version is the highest one not deleted.
CREATE TABLE room_key_backup_versions (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    -- JSON object, opaque to the server beyond the checks made when it is set.
    auth_data TEXT NOT NULL,
    -- Bumped in the transaction that changes the version's keys: the `etag` clients see.
    etag BIGINT NOT NULL DEFAULT 0,
    deleted BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, version)
);

-- The backed-up key of each megolm session, per version.
CREATE TABLE room_keys (
    user_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count BIGINT NOT NULL,
    is_verified BOOLEAN NOT NULL,
    -- JSON object, encrypted by the client: opaque to the server.
    session_data TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
