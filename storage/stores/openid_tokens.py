"""OpenID tokens: which user made one, and until when it is good."""

from __future__ import annotations

from storage.database import Database, Transaction


class OpenIdTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_token(
        self, token_hash: str, user_id: str, valid_until_ms: int, now_ms: int
    ) -> None:
        """Record a new token, and forget the expired ones."""

        def txn(t: Transaction) -> None:
            t.execute("DELETE FROM openid_tokens WHERE valid_until_ms <= ?", (now_ms,))
            t.execute(
                "INSERT INTO openid_tokens (token_hash, user_id, valid_until_ms) VALUES (?, ?, ?)",
                (token_hash, user_id, valid_until_ms),
            )

        await self._db.run_interaction("add_openid_token", txn)

    async def get_user_for_token(self, token_hash: str, now_ms: int) -> str | None:
        """Who made the token, if it exists and has not expired."""
        row = await self._db.run_interaction(
            "get_user_for_openid_token",
            lambda t: t.select_one(
                "SELECT user_id FROM openid_tokens WHERE token_hash = ? AND valid_until_ms > ?",
                (token_hash, now_ms),
            ),
        )
        return row[0] if row else None
