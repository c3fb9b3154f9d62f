"""What every area shares: config, reactor, clock, signing key, database, replication and
rate limiter settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from homeserver.clock import Clock
from homeserver.config import HomeserverConfig
from homeserver.ratelimit import RateLimiter
from homeserver.replication import Replication
from homeserver.signing_key import load_signing_key
from storage.database import Database
from storage.engines import create_engine


@dataclass(frozen=True)
class Core:
    config: HomeserverConfig
    reactor: Any
    server_name: str
    clock: Clock
    signing_key: Any
    db: Database
    replication: Replication

    def limiter(self, name: str, limit: Any) -> RateLimiter:
        """A rate limiter named for metrics, off when rate limits are disabled."""
        return RateLimiter(name, self.clock, limit, enabled=self.config.rate_limits.enabled)


def build_core(config: HomeserverConfig, reactor: Any) -> Core:
    return Core(
        config=config,
        reactor=reactor,
        server_name=config.server_name,
        clock=Clock(reactor),
        signing_key=load_signing_key(config.resolve_path(config.signing_key_path)),
        db=Database(
            create_engine(config.database_url, config.database.max_connections), reactor
        ),
        replication=Replication(config.redis, config.server_name),
    )
