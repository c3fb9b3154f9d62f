"""Third-party identifiers bound to accounts, and the e-mail validation sessions that prove
an address before it is bound."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from storage.database import Database, Transaction


class ThreepidInUseError(Exception):
    """The address is bound to another account."""


@dataclass(frozen=True)
class Threepid:
    medium: str
    address: str
    validated_at: int
    added_at: int


@dataclass(frozen=True)
class PendingValidation:
    """A validation session whose mail went out and whose link has not been followed yet."""

    session_id: str
    send_attempt: int


@dataclass(frozen=True)
class ValidatedAddress:
    medium: str
    address: str
    validated_at: int


class TokenCheck(enum.Enum):
    VALID = "valid"
    UNKNOWN_SESSION = "unknown_session"
    ALREADY_USED = "already_used"
    WRONG_TOKEN = "wrong_token"
    EXPIRED = "expired"


class ThreepidStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ----- bound identifiers -----------------------------------------------------------------

    async def get_threepids(self, user_id: str) -> list[Threepid]:
        rows = await self._db.run_interaction(
            "get_user_threepids",
            lambda txn: txn.select_all(
                "SELECT medium, address, validated_at, added_at FROM user_threepids"
                " WHERE user_id = ? ORDER BY added_at, medium, address",
                (user_id,),
            ),
        )
        return [Threepid(*row) for row in rows]

    async def get_user_id(self, medium: str, address: str) -> str | None:
        row = await self._db.run_interaction(
            "get_user_id_by_threepid",
            lambda txn: txn.select_one(
                "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?",
                (medium, address),
            ),
        )
        return None if row is None else str(row[0])

    async def add_threepid(
        self, user_id: str, medium: str, address: str, validated_at: int, added_at: int
    ) -> None:
        """Bind the address to `user_id` (again, if it already is: the times are renewed);
        raise ThreepidInUseError if another account has it."""
        try:
            await self._db.run_interaction(
                "add_user_threepid",
                lambda txn: _add_threepid_txn(
                    txn, user_id, medium, address, validated_at, added_at
                ),
            )
        except self._db.engine.integrity_error as e:
            # Two accounts racing for one address: the loser lands here.
            raise ThreepidInUseError(address) from e

    async def delete_threepid(self, user_id: str, medium: str, address: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
                (user_id, medium, address),
            )
            return txn.rowcount > 0

        return await self._db.run_interaction("delete_user_threepid", txn_fn)

    async def replace_threepids(
        self, user_id: str, threepids: Sequence[tuple[str, str]], now_ms: int
    ) -> None:
        """Make `threepids` ((medium, address) pairs) the account's whole set, in one
        transaction; ones it keeps keep their times. ThreepidInUseError if another account
        has one (and nothing changes)."""

        def txn_fn(txn: Transaction) -> None:
            wanted = set(threepids)
            for medium, address in _current(txn, user_id) - wanted:
                txn.execute(
                    "DELETE FROM user_threepids WHERE user_id = ? AND medium = ? AND address = ?",
                    (user_id, medium, address),
                )
            for medium, address in sorted(wanted - _current(txn, user_id)):
                _add_threepid_txn(txn, user_id, medium, address, now_ms, now_ms)

        try:
            await self._db.run_interaction("replace_user_threepids", txn_fn)
        except self._db.engine.integrity_error as e:
            raise ThreepidInUseError() from e

    async def delete_all_for_user(self, user_id: str) -> None:
        await self._db.run_interaction(
            "delete_all_user_threepids",
            lambda txn: txn.execute("DELETE FROM user_threepids WHERE user_id = ?", (user_id,)),
        )

    # ----- bindings at identity servers ------------------------------------------------------

    async def add_id_server_binding(
        self, user_id: str, medium: str, address: str, id_server: str
    ) -> None:
        """Record that `id_server` bound the address to the user (again is a no-op)."""

        def txn_fn(txn: Transaction) -> None:
            row = txn.select_one(
                "SELECT 1 FROM user_threepid_id_servers WHERE user_id = ? AND medium = ?"
                " AND address = ? AND id_server = ?",
                (user_id, medium, address, id_server),
            )
            if row is None:
                txn.execute(
                    "INSERT INTO user_threepid_id_servers (user_id, medium, address, id_server)"
                    " VALUES (?, ?, ?, ?)",
                    (user_id, medium, address, id_server),
                )

        try:
            await self._db.run_interaction("add_threepid_id_server", txn_fn)
        except self._db.engine.integrity_error:
            pass  # the same binding recorded by a concurrent request

    async def get_id_servers(self, user_id: str, medium: str, address: str) -> list[str]:
        rows = await self._db.run_interaction(
            "get_threepid_id_servers",
            lambda txn: txn.select_all(
                "SELECT id_server FROM user_threepid_id_servers"
                " WHERE user_id = ? AND medium = ? AND address = ? ORDER BY id_server",
                (user_id, medium, address),
            ),
        )
        return [str(row[0]) for row in rows]

    async def get_id_server_bound_threepids(self, user_id: str) -> list[tuple[str, str]]:
        """The (medium, address) pairs bound at some identity server for the user."""
        rows = await self._db.run_interaction(
            "get_id_server_bound_threepids",
            lambda txn: txn.select_all(
                "SELECT DISTINCT medium, address FROM user_threepid_id_servers"
                " WHERE user_id = ? ORDER BY medium, address",
                (user_id,),
            ),
        )
        return [(str(row[0]), str(row[1])) for row in rows]

    async def remove_id_server_binding(
        self, user_id: str, medium: str, address: str, id_server: str
    ) -> None:
        await self._db.run_interaction(
            "remove_threepid_id_server",
            lambda txn: txn.execute(
                "DELETE FROM user_threepid_id_servers WHERE user_id = ? AND medium = ?"
                " AND address = ? AND id_server = ?",
                (user_id, medium, address, id_server),
            ),
        )

    # ----- validation sessions ---------------------------------------------------------------

    async def get_pending_validation(
        self, medium: str, address: str, client_secret: str, purpose: str, now_ms: int
    ) -> PendingValidation | None:
        """The not yet validated session for this address and client secret whose token still
        works, if any: a further request continues it (same `sid`)."""
        row = await self._db.run_interaction(
            "get_pending_threepid_validation",
            lambda txn: txn.select_one(
                "SELECT session_id, send_attempt FROM threepid_validation_sessions"
                " WHERE client_secret = ? AND medium = ? AND address = ? AND purpose = ?"
                " AND validated_at IS NULL AND token_expires_at > ?"
                " ORDER BY created_at DESC LIMIT 1",
                (client_secret, medium, address, purpose, now_ms),
            ),
        )
        return None if row is None else PendingValidation(row[0], row[1])

    async def record_mail_sent(
        self,
        session_id: str,
        medium: str,
        address: str,
        client_secret: str,
        purpose: str,
        send_attempt: int,
        next_link: str | None,
        token_hash: str,
        token_expires_at: int,
        now_ms: int,
    ) -> None:
        """Start the session, or give an existing one the token of its newest mail (which
        replaces the earlier mail's token)."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE threepid_validation_sessions SET send_attempt = ?, next_link = ?,"
                " token_hash = ?, token_expires_at = ?"
                " WHERE session_id = ? AND validated_at IS NULL",
                (send_attempt, next_link, token_hash, token_expires_at, session_id),
            )
            if txn.rowcount == 0:
                txn.execute(
                    "INSERT INTO threepid_validation_sessions (session_id, medium, address,"
                    " client_secret, purpose, send_attempt, next_link, token_hash,"
                    " token_expires_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        session_id,
                        medium,
                        address,
                        client_secret,
                        purpose,
                        send_attempt,
                        next_link,
                        token_hash,
                        token_expires_at,
                        now_ms,
                    ),
                )

        await self._db.run_interaction("record_threepid_mail_sent", txn_fn)

    async def check_token(
        self, session_id: str, client_secret: str, token_hash: str, now_ms: int
    ) -> tuple[TokenCheck, str | None]:
        """Validate the session if the token is its current one and unexpired; the outcome
        and the session's next_link. The token works once: it is cleared on success."""

        def txn_fn(txn: Transaction) -> tuple[TokenCheck, str | None]:
            row = txn.select_one(
                "SELECT client_secret, token_hash, token_expires_at, validated_at, next_link"
                " FROM threepid_validation_sessions WHERE session_id = ?",
                (session_id,),
            )
            if row is None or row[0] != client_secret:
                return TokenCheck.UNKNOWN_SESSION, None
            stored_hash, expires_at, validated_at, next_link = row[1:]
            if validated_at is not None:
                return TokenCheck.ALREADY_USED, None
            if stored_hash != token_hash:
                return TokenCheck.WRONG_TOKEN, None
            if expires_at <= now_ms:
                return TokenCheck.EXPIRED, None
            txn.execute(
                "UPDATE threepid_validation_sessions SET validated_at = ?, token_hash = NULL"
                " WHERE session_id = ? AND validated_at IS NULL",
                (now_ms, session_id),
            )
            if txn.rowcount != 1:
                return TokenCheck.ALREADY_USED, None
            return TokenCheck.VALID, next_link

        return await self._db.run_interaction("check_threepid_token", txn_fn)

    async def take_validated(
        self, session_id: str, client_secret: str, purpose: str, validated_since: int
    ) -> ValidatedAddress | None:
        """The address a validated session proved, deleting the session so it proves it
        once; None if there is no such session (unknown, not validated yet, validated for
        another purpose, or longer ago than `validated_since`)."""

        def txn_fn(txn: Transaction) -> ValidatedAddress | None:
            row = txn.select_one(
                "SELECT medium, address, validated_at FROM threepid_validation_sessions"
                " WHERE session_id = ? AND client_secret = ? AND purpose = ?"
                " AND validated_at IS NOT NULL AND validated_at >= ?",
                (session_id, client_secret, purpose, validated_since),
            )
            if row is None:
                return None
            txn.execute(
                "DELETE FROM threepid_validation_sessions WHERE session_id = ?", (session_id,)
            )
            return ValidatedAddress(*row) if txn.rowcount == 1 else None

        return await self._db.run_interaction("take_validated_threepid", txn_fn)

    async def delete_sessions_created_before(self, cutoff_ms: int) -> None:
        await self._db.run_interaction(
            "expire_threepid_validation_sessions",
            lambda txn: txn.execute(
                "DELETE FROM threepid_validation_sessions WHERE created_at < ?", (cutoff_ms,)
            ),
        )


def _current(txn: Transaction, user_id: str) -> set[tuple[str, str]]:
    rows = txn.select_all(
        "SELECT medium, address FROM user_threepids WHERE user_id = ?", (user_id,)
    )
    return {(row[0], row[1]) for row in rows}


def _add_threepid_txn(
    txn: Transaction, user_id: str, medium: str, address: str, validated_at: int, added_at: int
) -> None:
    row = txn.select_one(
        "SELECT user_id FROM user_threepids WHERE medium = ? AND address = ?", (medium, address)
    )
    if row is not None and row[0] != user_id:
        raise ThreepidInUseError(address)
    if row is not None:
        txn.execute(
            "UPDATE user_threepids SET validated_at = ?, added_at = ?"
            " WHERE medium = ? AND address = ?",
            (validated_at, added_at, medium, address),
        )
        return
    txn.execute(
        "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at)"
        " VALUES (?, ?, ?, ?, ?)",
        (user_id, medium, address, validated_at, added_at),
    )
