-- The admin API's background tasks (room deletes, history purges), so their status can be
-- polled from any process and after a restart. A task that was running when its process
-- stopped is marked failed when the writer process starts again (it is not resumed).
CREATE TABLE admin_tasks (
    id TEXT PRIMARY KEY,
    -- Synapse's action names: shutdown_and_purge_room, purge_history.
    action TEXT NOT NULL,
    -- The room the task is about.
    resource_id TEXT NOT NULL,
    -- active, complete, failed (Synapse's words; a task starts at once, so it is never
    -- `scheduled`, the word Synapse has for one waiting in its queue).
    status TEXT NOT NULL,
    started_ts BIGINT NOT NULL,
    -- The last change of status or progress.
    updated_ts BIGINT NOT NULL,
    -- What the task has done so far, JSON (a delete's shutdown_room part).
    result TEXT,
    error TEXT,
    -- Rows deleted so far (the background updates status reports it).
    items_done BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX admin_tasks_resource ON admin_tasks (resource_id);
CREATE INDEX admin_tasks_status ON admin_tasks (status);
