"""Numbered, forward-only schema migrations, applied at start-up.

`storage/schema/NNNN_name.sql` holds portable SQL. Where the engines must differ, a file
`NNNN_name.postgresql.sql` or `NNNN_name.sqlite.sql` is used instead for that engine.
Applied numbers are recorded in `schema_migrations`; a database newer than the code is refused.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from storage.database import Database, Transaction

logger = logging.getLogger(__name__)

SCHEMA_DIR = Path(__file__).parent / "schema"
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(sqlite|postgresql))?\.sql$")
# Any id serialises concurrent start-ups of processes sharing one PostgreSQL database.
_PG_MIGRATION_LOCK = 7_2_1_0_5


class SchemaError(Exception):
    pass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    path: Path


def migrations_for(engine_name: str, schema_dir: Path = SCHEMA_DIR) -> list[Migration]:
    portable: dict[int, Migration] = {}
    specific: dict[int, Migration] = {}
    for path in sorted(schema_dir.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise SchemaError(f"unexpected file in schema directory: {path.name}")
        number, name, engine = int(match.group(1)), match.group(2), match.group(3)
        if engine is None:
            portable[number] = Migration(number, name, path)
        elif engine == engine_name:
            specific[number] = Migration(number, name, path)
    merged = {**portable, **specific}
    return [merged[n] for n in sorted(merged)]


def split_statements(sql: str) -> list[str]:
    """Statements end with `;` at the end of a line; `--` comments are dropped."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    statements, current = [], []
    for line in lines:
        current.append(line)
        if line.rstrip().endswith(";"):
            statements.append("\n".join(current).strip().rstrip(";"))
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return [s for s in statements if s]


def _apply(txn: Transaction, migrations: list[Migration]) -> list[int]:
    if txn.engine.name == "postgresql":
        # READ COMMITTED for this transaction: under the pool's REPEATABLE READ the snapshot is
        # taken by the lock statement itself, before the wait, so a process that waited for
        # another's migrations would not see them and would try to apply them again.
        txn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        txn.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
    elif txn.engine.name == "sqlite":
        # Take the write lock up front (instead of the usual deferred BEGIN), serialising
        # concurrent start-ups the way the advisory lock does on PostgreSQL. The whole
        # migration, DDL included, is one transaction: a failure leaves nothing behind.
        txn.execute("BEGIN IMMEDIATE")
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ts BIGINT NOT NULL)"
    )
    applied = {row[0] for row in txn.select_all("SELECT number FROM schema_migrations")}
    known = {m.number for m in migrations}
    unknown = sorted(applied - known)
    if unknown:
        raise SchemaError(
            f"database has schema migration {unknown[-1]}, newer than this version of Heddle"
        )
    done = []
    for migration in migrations:
        if migration.number in applied:
            continue
        for statement in split_statements(migration.path.read_text(encoding="utf-8")):
            txn.execute(statement)
        txn.execute(
            "INSERT INTO schema_migrations (number, name, applied_ts) VALUES (?, ?, ?)",
            (migration.number, migration.name, int(time.time() * 1000)),
        )
        done.append(migration.number)
    return done


async def apply_migrations(db: Database) -> list[int]:
    """Bring the schema up to date in one transaction; returns the numbers applied."""
    migrations = migrations_for(db.engine.name)
    done = await db.run_interaction("apply_migrations", _apply, migrations)
    if done:
        logger.info("applied schema migrations %s on %s", done, db.engine.describe())
    return done
