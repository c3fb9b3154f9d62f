"""Database engines: what differs between SQLite and PostgreSQL, and nothing else."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from storage.engines.base import Engine, WriterLock
from storage.engines.sqlite import SqliteEngine

if TYPE_CHECKING:
    from storage.engines.postgres import PostgresEngine


def create_engine(url: str, max_connections: int = 10) -> Engine:
    if url.startswith("sqlite://"):
        return SqliteEngine(url)
    if url.startswith(("postgresql://", "postgres://")):
        # Imported only then: psycopg2 costs a server on SQLite 6 MB of memory for nothing.
        from storage.engines.postgres import PostgresEngine

        return PostgresEngine(url, max_connections=max_connections)
    raise ValueError(f"unsupported database URL: {url}")


def __getattr__(name: str) -> Any:
    if name == "PostgresEngine":
        from storage.engines.postgres import PostgresEngine

        return PostgresEngine
    raise AttributeError(name)


__all__ = ["Engine", "PostgresEngine", "SqliteEngine", "WriterLock", "create_engine"]
