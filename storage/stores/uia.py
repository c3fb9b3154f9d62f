"""User-interactive auth sessions, kept in the database so any process can continue one."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from storage.database import Database, Transaction

# The request parameters a session remembers (registration: username, device, password hash)
# share the `completed` JSON document with the stages' results, under a key no stage has.
_PARAMS_KEY = "org.heddle.request_params"


@dataclass(frozen=True)
class UiaSession:
    session_id: str
    created_ts: int
    method: str
    uri: str
    user_id: str | None
    completed: dict[str, Any]
    # Parameters of earlier requests in the session, for the later ones that leave them out.
    params: dict[str, Any] = field(default_factory=dict)


def _split(document: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(completed stages, remembered params) from the stored JSON document."""
    completed = json.loads(document)
    params = completed.pop(_PARAMS_KEY, {})
    return completed, params


class UiaStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_session(
        self, session_id: str, now_ms: int, method: str, uri: str, user_id: str | None,
        params: dict[str, Any] | None = None,
    ) -> None:
        document = json.dumps({_PARAMS_KEY: params} if params else {})
        await self._db.run_interaction(
            "create_uia_session",
            lambda txn: txn.execute(
                "INSERT INTO ui_auth_sessions (session_id, created_ts, method, uri, user_id,"
                " completed) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, now_ms, method, uri, user_id, document),
            ),
        )

    async def set_params(self, session_id: str, params: dict[str, Any]) -> None:
        """Replace the request parameters the session remembers."""
        await self._update_document("set_uia_params", session_id, _PARAMS_KEY, params)

    async def get_session(self, session_id: str) -> UiaSession | None:
        row = await self._db.run_interaction(
            "get_uia_session",
            lambda txn: txn.select_one(
                "SELECT session_id, created_ts, method, uri, user_id, completed"
                " FROM ui_auth_sessions WHERE session_id = ?",
                (session_id,),
            ),
        )
        if row is None:
            return None
        completed, params = _split(row[5])
        return UiaSession(row[0], row[1], row[2], row[3], row[4], completed, params)

    async def mark_stage_completed(self, session_id: str, stage: str, result: Any) -> None:
        await self._update_document("mark_uia_stage_completed", session_id, stage, result)

    async def _update_document(self, desc: str, session_id: str, key: str, value: Any) -> None:
        def txn_fn(txn: Transaction) -> None:
            row = txn.select_one(
                "SELECT completed FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            )
            if row is None:
                return
            document = json.loads(row[0])
            document[key] = value
            txn.execute(
                "UPDATE ui_auth_sessions SET completed = ? WHERE session_id = ?",
                (json.dumps(document), session_id),
            )

        await self._db.run_interaction(desc, txn_fn)

    async def claim_session(self, session_id: str) -> bool:
        """Mark the session as in use by one operation; False if another already holds it."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE ui_auth_sessions SET claimed = ? WHERE session_id = ? AND claimed = ?",
                (True, session_id, False),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("claim_uia_session", txn_fn)

    async def release_session(self, session_id: str) -> None:
        await self._db.run_interaction(
            "release_uia_session",
            lambda txn: txn.execute(
                "UPDATE ui_auth_sessions SET claimed = ? WHERE session_id = ?",
                (False, session_id),
            ),
        )

    async def delete_session(self, session_id: str) -> None:
        await self._db.run_interaction(
            "delete_uia_session",
            lambda txn: txn.execute(
                "DELETE FROM ui_auth_sessions WHERE session_id = ?", (session_id,)
            ),
        )

    async def delete_sessions_older_than(self, cutoff_ms: int) -> list[dict[str, Any]]:
        """Delete sessions created before `cutoff_ms`; their completed stages' results."""

        def txn_fn(txn: Transaction) -> list[dict[str, Any]]:
            rows = txn.select_all(
                "SELECT completed FROM ui_auth_sessions WHERE created_ts < ?", (cutoff_ms,)
            )
            txn.execute("DELETE FROM ui_auth_sessions WHERE created_ts < ?", (cutoff_ms,))
            return [_split(row[0])[0] for row in rows]

        return await self._db.run_interaction("expire_uia_sessions", txn_fn)
