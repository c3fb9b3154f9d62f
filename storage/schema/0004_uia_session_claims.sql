-- A completed UIA session is claimed by the operation it authorises, so two concurrent
-- requests cannot both use it (see homeserver/auth/uia.py, `operation`).
ALTER TABLE ui_auth_sessions ADD COLUMN claimed BOOLEAN NOT NULL DEFAULT FALSE;
