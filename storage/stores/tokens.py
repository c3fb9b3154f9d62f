"""Access-token validity rows and rotating refresh tokens."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from storage.database import Database, Transaction
from storage.stores.devices import delete_device_tokens_txn


@dataclass(frozen=True)
class AccessTokenRow:
    token_id: str
    user_id: str
    device_id: str
    expires_ts: int | None
    refresh_token_id: str | None
    used: bool


class RefreshOutcome(enum.Enum):
    ROTATED = "rotated"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    # A refresh token presented after its successor was used: it leaked, the session is revoked.
    REUSED = "reused"


@dataclass
class RefreshResult:
    outcome: RefreshOutcome
    user_id: str | None = None
    device_id: str | None = None
    revoked_access_token_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class NewTokens:
    """IDs for the pair a refresh would issue, chosen by the caller before the transaction."""

    access_token_id: str
    access_expires_ts: int | None
    refresh_token_id: str
    refresh_token_hash: str
    refresh_expires_ts: int


class TokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add_access_token(
        self,
        token_id: str,
        user_id: str,
        device_id: str,
        now_ms: int,
        expires_ts: int | None,
        refresh_token_id: str | None = None,
        refresh_token_hash: str | None = None,
        refresh_expires_ts: int | None = None,
        replace_device_tokens: bool = False,
    ) -> list[str]:
        """Record a new access token (and its refresh token, if any).

        With `replace_device_tokens`, the device's earlier tokens are revoked in the same
        transaction, as the spec asks when a client logs in with an existing device ID.
        Returns the access token IDs that were revoked.
        """

        def txn_fn(txn: Transaction) -> list[str]:
            revoked = (
                delete_device_tokens_txn(txn, user_id, [device_id])
                if replace_device_tokens
                else []
            )
            if refresh_token_id is not None:
                txn.execute(
                    "INSERT INTO refresh_tokens (token_id, token_hash, user_id, device_id,"
                    " created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?)",
                    (refresh_token_id, refresh_token_hash, user_id, device_id, now_ms,
                     refresh_expires_ts),
                )
            _insert_access_token(
                txn, token_id, user_id, device_id, now_ms, expires_ts, refresh_token_id
            )
            return revoked

        return await self._db.run_interaction("add_access_token", txn_fn)

    async def get_access_token(self, token_id: str) -> AccessTokenRow | None:
        row = await self._db.run_interaction(
            "get_access_token",
            lambda txn: txn.select_one(
                "SELECT token_id, user_id, device_id, expires_ts, refresh_token_id, used"
                " FROM access_tokens WHERE token_id = ?",
                (token_id,),
            ),
        )
        if row is None:
            return None
        return AccessTokenRow(row[0], row[1], row[2], row[3], row[4], bool(row[5]))

    async def mark_access_token_used(
        self, token_id: str, refresh_token_id: str | None
    ) -> list[str]:
        """First use of a refreshed access token retires the refresh token it replaced, and
        the access tokens issued with that one. Returns the access token IDs revoked.

        Many first uses at once (a client opening several connections with a new token)
        race here: the one that marks the row does the rest. On PostgreSQL the others' first
        attempts conflict; retried, they see the row marked and change nothing, so the
        retries end instead of conflicting again."""

        def txn_fn(txn: Transaction) -> list[str]:
            txn.execute(
                "UPDATE access_tokens SET used = ? WHERE token_id = ? AND used = ?",
                (True, token_id, False),
            )
            if txn.rowcount == 0 or refresh_token_id is None:
                return []
            return _retire_predecessor_txn(txn, refresh_token_id)

        return await self._db.run_interaction("mark_access_token_used", txn_fn)

    async def get_refresh_token_user(self, token_hash: str) -> str | None:
        """Whose refresh token this is (None if unknown), so the account can be checked
        before the token is rotated."""
        row = await self._db.run_interaction(
            "get_refresh_token_user",
            lambda txn: txn.select_one(
                "SELECT user_id FROM refresh_tokens WHERE token_hash = ?", (token_hash,)
            ),
        )
        return None if row is None else row[0]

    async def delete_access_token(self, token_id: str) -> None:
        await self._db.run_interaction(
            "delete_access_token",
            lambda txn: txn.execute("DELETE FROM access_tokens WHERE token_id = ?", (token_id,)),
        )

    async def rotate_refresh_token(
        self, token_hash: str, now_ms: int, new: NewTokens
    ) -> RefreshResult:
        def txn_fn(txn: Transaction) -> RefreshResult:
            row = txn.select_one(
                "SELECT token_id, user_id, device_id, expires_ts, next_token_id, revoked"
                " FROM refresh_tokens WHERE token_hash = ?",
                (token_hash,),
            )
            if row is None:
                return RefreshResult(RefreshOutcome.UNKNOWN)
            token_id, user_id, device_id, expires_ts, next_token_id, revoked = row
            if revoked:
                return RefreshResult(
                    RefreshOutcome.REUSED,
                    user_id,
                    device_id,
                    delete_device_tokens_txn(txn, user_id, [device_id]),
                )
            if expires_ts <= now_ms:
                return RefreshResult(RefreshOutcome.EXPIRED, user_id, device_id)
            revoked_ids: list[str] = []
            if next_token_id is not None:
                # Refreshed before, but the client never used what it got (lost the response):
                # the spec keeps this token valid; the unused successor is discarded.
                revoked_ids = [
                    r[0]
                    for r in txn.select_all(
                        "SELECT token_id FROM access_tokens WHERE refresh_token_id = ?",
                        (next_token_id,),
                    )
                ]
                txn.execute(
                    "DELETE FROM access_tokens WHERE refresh_token_id = ?", (next_token_id,)
                )
                txn.execute("DELETE FROM refresh_tokens WHERE token_id = ?", (next_token_id,))
            # Using this token retires its own predecessor.
            revoked_ids += _retire_predecessor_txn(txn, token_id)
            txn.execute(
                "INSERT INTO refresh_tokens (token_id, token_hash, user_id, device_id,"
                " created_ts, expires_ts) VALUES (?, ?, ?, ?, ?, ?)",
                (new.refresh_token_id, new.refresh_token_hash, user_id, device_id, now_ms,
                 new.refresh_expires_ts),
            )
            txn.execute(
                "UPDATE refresh_tokens SET next_token_id = ? WHERE token_id = ?",
                (new.refresh_token_id, token_id),
            )
            _insert_access_token(
                txn, new.access_token_id, user_id, device_id, now_ms, new.access_expires_ts,
                new.refresh_token_id,
            )
            return RefreshResult(RefreshOutcome.ROTATED, user_id, device_id, revoked_ids)

        return await self._db.run_interaction("rotate_refresh_token", txn_fn)

    async def revoke_device_tokens(self, user_id: str, device_id: str) -> list[str]:
        return await self._db.run_interaction(
            "revoke_device_tokens", delete_device_tokens_txn, user_id, [device_id]
        )


def _insert_access_token(
    txn: Transaction,
    token_id: str,
    user_id: str,
    device_id: str,
    now_ms: int,
    expires_ts: int | None,
    refresh_token_id: str | None,
) -> None:
    txn.execute(
        "INSERT INTO access_tokens (token_id, user_id, device_id, created_ts, expires_ts,"
        " refresh_token_id) VALUES (?, ?, ?, ?, ?, ?)",
        (token_id, user_id, device_id, now_ms, expires_ts, refresh_token_id),
    )


def _retire_predecessor_txn(txn: Transaction, refresh_token_id: str) -> list[str]:
    """The client has used what a refresh gave it (the access token or the refresh token
    `refresh_token_id`): the refresh token it replaced is marked revoked (kept, so that
    presenting it again is seen as reuse), and the access tokens issued with that one are
    deleted, as it now holds newer ones. Returns the deleted access token IDs."""
    predecessors = [
        r[0]
        for r in txn.select_all(
            "SELECT token_id FROM refresh_tokens WHERE next_token_id = ?", (refresh_token_id,)
        )
    ]
    if not predecessors:
        return []
    txn.execute(
        "UPDATE refresh_tokens SET revoked = ? WHERE next_token_id = ?", (True, refresh_token_id)
    )
    revoked: list[str] = []
    for predecessor in predecessors:
        revoked += [
            r[0]
            for r in txn.select_all(
                "SELECT token_id FROM access_tokens WHERE refresh_token_id = ?", (predecessor,)
            )
        ]
        txn.execute("DELETE FROM access_tokens WHERE refresh_token_id = ?", (predecessor,))
    return revoked
