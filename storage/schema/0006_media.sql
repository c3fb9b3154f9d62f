-- Media repository: what each media ID is, and the stored contents it points at.

-- One row per media ID, local (uploaded here) or remote (cached from its origin server).
CREATE TABLE media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    -- The uploader (local media); NULL for remote media.
    user_id TEXT,
    content_type TEXT,
    upload_name TEXT,
    size BIGINT,
    -- SHA-256 of the bytes (hex): the key of media_content. NULL until uploaded (an ID made
    -- by POST /media/v1/create and not used yet).
    sha256 TEXT,
    created_ts BIGINT NOT NULL,
    -- Async uploads: the ID must be used before this time, or it is forgotten.
    unused_expires_at BIGINT,
    quarantined BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX media_user ON media (user_id, created_ts);

-- Stored contents, shared by identical uploads and counted so the last reference frees them.
CREATE TABLE media_content (
    sha256 TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    refcount BIGINT NOT NULL
);

-- Thumbnails of a media item, each stored under its own key.
CREATE TABLE media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated BOOLEAN NOT NULL,
    content_type TEXT NOT NULL,
    storage_key TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
