"""Single-use login tokens for the m.login.token flow (POST /login/get_token)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from storage.database import Database, Transaction


class LoginTokenOutcome(enum.Enum):
    CONSUMED = "consumed"
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


@dataclass(frozen=True)
class ConsumedLoginToken:
    outcome: LoginTokenOutcome
    user_id: str | None = None


class LoginTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(self, token_hash: str, user_id: str, now_ms: int, expires_ts: int) -> None:
        """Record a new token; tokens that expired before now go at the same time, so the
        table holds only what could still be presented (and recently spent ones)."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute("DELETE FROM login_tokens WHERE expires_ts <= ?", (now_ms,))
            txn.execute(
                "INSERT INTO login_tokens (token_hash, user_id, created_ts, expires_ts)"
                " VALUES (?, ?, ?, ?)",
                (token_hash, user_id, now_ms, expires_ts),
            )

        await self._db.run_interaction("add_login_token", txn_fn)

    async def consume_token(self, token_hash: str, now_ms: int) -> ConsumedLoginToken:
        """Spend a token. The conditional UPDATE is what makes it single-use: of two logins
        racing with one token, only one changes the row."""

        def txn_fn(txn: Transaction) -> ConsumedLoginToken:
            txn.execute(
                "UPDATE login_tokens SET used_ts = ?"
                " WHERE token_hash = ? AND used_ts IS NULL AND expires_ts > ?",
                (now_ms, token_hash, now_ms),
            )
            spent = txn.rowcount == 1
            row = txn.select_one(
                "SELECT user_id, used_ts FROM login_tokens WHERE token_hash = ?", (token_hash,)
            )
            if row is None:
                return ConsumedLoginToken(LoginTokenOutcome.UNKNOWN)
            if spent:
                return ConsumedLoginToken(LoginTokenOutcome.CONSUMED, row[0])
            if row[1] is not None:
                return ConsumedLoginToken(LoginTokenOutcome.USED, row[0])
            return ConsumedLoginToken(LoginTokenOutcome.EXPIRED, row[0])

        return await self._db.run_interaction("consume_login_token", txn_fn)
