from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from storage.database import Database, Transaction


@dataclass(frozen=True)
class RatelimitOverride:
    """An admin's override of a user's message rate limit (0 per second: no limit)."""

    messages_per_second: int
    burst_count: int


@dataclass(frozen=True)
class Account:
    user_id: str
    password_hash: str | None
    created_ts: int
    is_admin: bool
    is_guest: bool
    deactivated: bool
    locked: bool = False
    suspended: bool = False
    shadow_banned: bool = False
    erased: bool = False
    user_type: str | None = None
    ratelimit_override: RatelimitOverride | None = None


# The flags an admin sets with `AccountStore.set_flag`: column names, never user input.
FLAGS = ("is_admin", "locked", "suspended", "shadow_banned")

_ACCOUNT_SQL = (
    "SELECT u.user_id, u.password_hash, u.created_ts, u.is_admin, u.is_guest, u.deactivated,"
    " u.locked, u.suspended, u.shadow_banned, u.erased, u.user_type,"
    " r.messages_per_second, r.burst_count"
    " FROM users AS u LEFT JOIN ratelimit_overrides AS r ON r.user_id = u.user_id"
    " WHERE u.user_id = ?"
)


def _account(row: tuple) -> Account:
    override = RatelimitOverride(row[11], row[12]) if row[11] is not None else None
    return Account(
        row[0], row[1], row[2], bool(row[3]), bool(row[4]), bool(row[5]), bool(row[6]),
        bool(row[7]), bool(row[8]), bool(row[9]), row[10], override,
    )


class UserInUseError(Exception):
    pass


class AccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_account(
        self,
        user_id: str,
        password_hash: str | None,
        created_ts: int,
        is_admin: bool = False,
        displayname: str | None = None,
        is_guest: bool = False,
    ) -> None:
        """Create the user and their profile row; raise UserInUseError if the ID is taken."""

        def txn_fn(txn: Transaction) -> None:
            if txn.select_one("SELECT 1 FROM users WHERE user_id = ?", (user_id,)):
                raise UserInUseError(user_id)
            txn.execute(
                "INSERT INTO users (user_id, password_hash, created_ts, is_admin, is_guest)"
                " VALUES (?, ?, ?, ?, ?)",
                (user_id, password_hash, created_ts, is_admin, is_guest),
            )
            txn.execute(
                "INSERT INTO profiles (user_id, displayname) VALUES (?, ?)",
                (user_id, displayname),
            )

        try:
            await self._db.run_interaction("create_account", txn_fn)
        except self._db.engine.integrity_error as e:
            # Two registrations racing for one name: the loser lands here.
            raise UserInUseError(user_id) from e

    async def get_account(self, user_id: str) -> Account | None:
        row = await self._db.run_interaction(
            "get_account", lambda txn: txn.select_one(_ACCOUNT_SQL, (user_id,))
        )
        return _account(row) if row is not None else None

    async def is_user_id_taken(self, user_id: str) -> bool:
        return await self.get_account(user_id) is not None

    async def set_password_hash(self, user_id: str, password_hash: str | None) -> None:
        await self._db.run_interaction(
            "set_password_hash",
            lambda txn: txn.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ?", (password_hash, user_id)
            ),
        )

    async def upgrade_guest(self, user_id: str, password_hash: str) -> bool:
        """Make a guest account a full one with this password; False if it is not (or no
        longer) a guest, so of two upgrades racing only one succeeds."""

        def txn_fn(txn: Transaction) -> bool:
            txn.execute(
                "UPDATE users SET is_guest = ?, password_hash = ?"
                " WHERE user_id = ? AND is_guest = ? AND deactivated = ?",
                (False, password_hash, user_id, True, False),
            )
            return txn.rowcount == 1

        return await self._db.run_interaction("upgrade_guest", txn_fn)

    async def set_admin(self, user_id: str, is_admin: bool) -> None:
        await self._db.run_interaction(
            "set_admin",
            lambda txn: txn.execute(
                "UPDATE users SET is_admin = ? WHERE user_id = ?", (is_admin, user_id)
            ),
        )

    async def set_flag(self, user_id: str, flag: str, value: bool) -> None:
        """Set one of `FLAGS` (admin, locked, suspended, shadow-banned)."""
        if flag not in FLAGS:
            raise ValueError(f"not an account flag: {flag}")
        await self._db.run_interaction(
            f"set_{flag}",
            lambda txn: txn.execute(
                f"UPDATE users SET {flag} = ? WHERE user_id = ?", (value, user_id)
            ),
        )

    async def set_user_type(self, user_id: str, user_type: str | None) -> None:
        await self._db.run_interaction(
            "set_user_type",
            lambda txn: txn.execute(
                "UPDATE users SET user_type = ? WHERE user_id = ?", (user_type, user_id)
            ),
        )

    async def reactivate(self, user_id: str) -> None:
        """Undo `mark_deactivated` (the password, wiped then, is set separately); what the
        deactivation had left to do is not done any more."""

        def txn_fn(txn: Transaction) -> None:
            txn.execute(
                "UPDATE users SET deactivated = ?, erased = ? WHERE user_id = ?",
                (False, False, user_id),
            )
            txn.execute("DELETE FROM pending_deactivations WHERE user_id = ?", (user_id,))

        await self._db.run_interaction("reactivate", txn_fn)

    async def pending_deactivations(self) -> list[str]:
        """Deactivated accounts whose clean-up has not finished (a process died during it)."""
        rows = await self._db.run_interaction(
            "pending_deactivations",
            lambda txn: txn.select_all("SELECT user_id FROM pending_deactivations ORDER BY user_id"),
        )
        return [row[0] for row in rows]

    async def finish_deactivation(self, user_id: str) -> None:
        await self._db.run_interaction(
            "finish_deactivation",
            lambda txn: txn.execute(
                "DELETE FROM pending_deactivations WHERE user_id = ?", (user_id,)
            ),
        )

    async def erased_users(self, user_ids: Collection[str]) -> set[str]:
        """Which of these users asked for erasure when their account was deactivated."""
        if not user_ids:
            return set()
        rows = await self._db.run_interaction(
            "erased_users",
            lambda txn: txn.select_in_chunks(
                "SELECT user_id FROM users WHERE erased = ? AND user_id IN ({in})",
                sorted(user_ids),
                (True,),
            ),
        )
        return {row[0] for row in rows}

    async def count_active_admins(self) -> int:
        row = await self._db.run_interaction(
            "count_active_admins",
            lambda txn: txn.select_one(
                "SELECT COUNT(*) FROM users WHERE is_admin = ? AND deactivated = ?",
                (True, False),
            ),
        )
        return int(row[0]) if row else 0

    async def set_ratelimit_override(
        self, user_id: str, override: RatelimitOverride | None
    ) -> None:
        def txn_fn(txn: Transaction) -> None:
            if override is None:
                txn.execute("DELETE FROM ratelimit_overrides WHERE user_id = ?", (user_id,))
                return
            txn.execute(
                "INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count)"
                " VALUES (?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                " messages_per_second = excluded.messages_per_second,"
                " burst_count = excluded.burst_count",
                (user_id, override.messages_per_second, override.burst_count),
            )

        await self._db.run_interaction("set_ratelimit_override", txn_fn)

    async def demote_admin(self, user_id: str) -> bool:
        """Take away server admin, unless the user is the last active admin (False then).
        Checked and written in one transaction that locks the admins' rows, so concurrent
        demotions and deactivations of the last two admins cannot both succeed."""

        def txn_fn(txn: Transaction) -> bool:
            if not _another_admin_remains_txn(txn, user_id):
                return False
            txn.execute("UPDATE users SET is_admin = ? WHERE user_id = ?", (False, user_id))
            return True

        return await self._db.run_interaction("demote_admin", txn_fn)

    async def mark_deactivated(self, user_id: str, erase: bool, keep_an_admin: bool = False) -> bool:
        """Deactivate: no password, and with `erase` the profile is wiped too; the
        account is added to the pending deactivations (`finish_deactivation`). With
        `keep_an_admin` (an admin's doing), refused (False) if the user is the last active
        admin, atomically as in `demote_admin`."""

        def txn_fn(txn: Transaction) -> bool:
            if keep_an_admin and not _another_admin_remains_txn(txn, user_id):
                return False
            txn.execute(
                "UPDATE users SET deactivated = ?, password_hash = NULL WHERE user_id = ?",
                (True, user_id),
            )
            # What is left to do (sessions, rooms) is remembered with the mark itself.
            txn.execute(
                "INSERT INTO pending_deactivations (user_id) VALUES (?)"
                " ON CONFLICT (user_id) DO NOTHING",
                (user_id,),
            )
            if erase:
                txn.execute("UPDATE users SET erased = ? WHERE user_id = ?", (True, user_id))
                txn.execute(
                    "UPDATE profiles SET displayname = NULL, avatar_url = NULL WHERE user_id = ?",
                    (user_id,),
                )
                txn.execute("DELETE FROM profile_fields WHERE user_id = ?", (user_id,))
            return True

        return await self._db.run_interaction("mark_deactivated", txn_fn)


def _another_admin_remains_txn(txn: Transaction, user_id: str) -> bool:
    """Whether removing `user_id` from the active admins leaves at least one (True if it is
    not one). Locks the active admins' rows (`Engine.for_update`) until the transaction
    ends, so the answer holds for what the transaction then writes."""
    admins = txn.select_all(
        "SELECT user_id FROM users WHERE is_admin = ? AND deactivated = ?" + txn.engine.for_update,
        (True, False),
    )
    active = {row[0] for row in admins}
    return user_id not in active or len(active) > 1
