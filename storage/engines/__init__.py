"""Database engines: what differs between SQLite and PostgreSQL, and nothing else."""

from __future__ import annotations

from storage.engines.base import Engine, WriterLock
from storage.engines.postgres import PostgresEngine
from storage.engines.sqlite import SqliteEngine


def create_engine(url: str, max_connections: int = 10) -> Engine:
    if url.startswith("sqlite://"):
        return SqliteEngine(url)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresEngine(url, max_connections=max_connections)
    raise ValueError(f"unsupported database URL: {url}")


__all__ = ["Engine", "PostgresEngine", "SqliteEngine", "WriterLock", "create_engine"]
