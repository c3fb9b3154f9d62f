"""Registration tokens made through the admin API, and how many registrations used them."""

from __future__ import annotations

from dataclasses import dataclass

from storage.database import Database, Transaction

_COLUMNS = "token, uses_allowed, pending, completed, expiry_time"

# A token is valid while it has uses left (counting registrations under way) and has not
# expired. `?` is the current time.
_VALID = (
    "(uses_allowed IS NULL OR pending + completed < uses_allowed)"
    " AND (expiry_time IS NULL OR expiry_time > ?)"
)


@dataclass(frozen=True)
class RegistrationToken:
    token: str
    uses_allowed: int | None
    pending: int
    completed: int
    expiry_time: int | None


def _token(row: tuple) -> RegistrationToken:
    return RegistrationToken(row[0], row[1], int(row[2]), int(row[3]), row[4])


class RegistrationTokenStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_tokens(self, valid: bool | None, now_ms: int) -> list[RegistrationToken]:
        """All tokens; only the valid ones with `valid`, only the invalid ones with False."""
        sql = f"SELECT {_COLUMNS} FROM registration_tokens"
        args: list[object] = []
        if valid is not None:
            sql += f" WHERE {'' if valid else 'NOT '}({_VALID})"
            args.append(now_ms)
        sql += " ORDER BY token"
        rows = await self._db.run_interaction(
            "list_registration_tokens", lambda txn: txn.select_all(sql, args)
        )
        return [_token(row) for row in rows]

    async def get_token(self, token: str) -> RegistrationToken | None:
        row = await self._db.run_interaction(
            "get_registration_token",
            lambda txn: txn.select_one(
                f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = ?", (token,)
            ),
        )
        return _token(row) if row else None

    async def create_token(
        self, token: str, uses_allowed: int | None, expiry_time: int | None
    ) -> bool:
        """False if the token exists already."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "INSERT INTO registration_tokens (token, uses_allowed, expiry_time)"
                " VALUES (?, ?, ?) ON CONFLICT (token) DO NOTHING",
                (token, uses_allowed, expiry_time),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("create_registration_token", txn_fn)

    async def update_token(
        self, token: str, changes: dict[str, int | None]
    ) -> RegistrationToken | None:
        """Set `uses_allowed` and/or `expiry_time`; None if there is no such token."""

        def txn_fn(txn: Transaction) -> RegistrationToken | None:
            if changes:
                # Column names come from the caller's fixed set, never from the request.
                assert set(changes) <= {"uses_allowed", "expiry_time"}
                assignments = ", ".join(f"{column} = ?" for column in changes)
                txn.execute(
                    f"UPDATE registration_tokens SET {assignments} WHERE token = ?",
                    (*changes.values(), token),
                )
            row = txn.select_one(
                f"SELECT {_COLUMNS} FROM registration_tokens WHERE token = ?", (token,)
            )
            return _token(row) if row else None

        return await self._db.run_interaction("update_registration_token", txn_fn)

    async def delete_token(self, token: str) -> bool:
        def txn_fn(txn: Transaction) -> bool:
            txn.execute("DELETE FROM registration_tokens WHERE token = ?", (token,))
            return txn.rowcount == 1

        return await self._db.run_interaction("delete_registration_token", txn_fn)

    async def is_valid(self, token: str, now_ms: int) -> bool:
        row = await self._db.run_interaction(
            "registration_token_valid",
            lambda txn: txn.select_one(
                f"SELECT 1 FROM registration_tokens WHERE token = ? AND {_VALID}",
                (token, now_ms),
            ),
        )
        return row is not None

    async def start_use(self, token: str, now_ms: int) -> bool:
        """Count one registration under way with the token, if it is still valid: checked
        and counted in one statement, so two sessions cannot both take a token's last use."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                f"UPDATE registration_tokens SET pending = pending + 1"
                f" WHERE token = ? AND {_VALID}",
                (token, now_ms),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("start_registration_token_use", txn_fn)

    async def complete_use(self, token: str) -> None:
        """A registration under way with the token finished."""
        await self._db.run_interaction(
            "complete_registration_token_use",
            lambda txn: txn.execute(
                "UPDATE registration_tokens SET pending = pending - 1,"
                " completed = completed + 1 WHERE token = ? AND pending > 0",
                (token,),
            ),
        )

    async def abandon_use(self, token: str) -> None:
        """A session that passed the token stage expired without registering."""
        await self._db.run_interaction(
            "abandon_registration_token_use",
            lambda txn: txn.execute(
                "UPDATE registration_tokens SET pending = pending - 1"
                " WHERE token = ? AND pending > 0",
                (token,),
            ),
        )
