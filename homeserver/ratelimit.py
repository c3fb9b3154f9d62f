"""Token-bucket rate limiting, keyed by whatever the caller chooses (IP, account, ...)."""

from __future__ import annotations

from homeserver import metrics
from homeserver.caches import LruCache
from homeserver.clock import Clock
from homeserver.config import RateLimit
from homeserver.errors import LimitExceededError

# Buckets kept per limiter; the least recently used ones are forgotten beyond this.
MAX_TRACKED_KEYS = 100_000


class RateLimiter:
    def __init__(self, name: str, clock: Clock, limit: RateLimit, enabled: bool = True) -> None:
        self.name = name
        self._clock = clock
        self._rate = limit.per_second
        self._burst = limit.burst_count
        self._enabled = enabled
        # key -> (tokens left, time of last update). A forgotten bucket starts full again,
        # which only the least recently seen keys risk.
        self._buckets: LruCache[str, tuple[float, float]] = LruCache(
            f"ratelimit_{name}", MAX_TRACKED_KEYS
        )

    def _refill(self, key: str) -> float:
        now = self._clock.time()
        tokens, last = self._buckets.get(key, (float(self._burst), now))
        tokens = min(float(self._burst), tokens + (now - last) * self._rate)
        self._buckets.set(key, (tokens, now))
        return tokens

    def check(self, key: str) -> None:
        """Take one action from `key`'s bucket, or raise 429 M_LIMIT_EXCEEDED."""
        if not self._enabled:
            return
        self.check_only(key)
        tokens, now = self._buckets.peek(key, (float(self._burst), self._clock.time()))
        self._buckets.set(key, (tokens - 1.0, now))

    def check_only(self, key: str) -> None:
        """Raise 429 if `key` has no action left, without using one up."""
        if not self._enabled:
            return
        tokens = self._refill(key)
        if tokens < 1.0:
            metrics.RATE_LIMITED.labels(self.name).inc()
            retry_after_ms = int((1.0 - tokens) / self._rate * 1000) + 1
            raise LimitExceededError(retry_after_ms)

    def record(self, key: str) -> None:
        """Use up one action without checking (e.g. count a failure after the fact)."""
        if not self._enabled:
            return
        tokens = self._refill(key)
        self._buckets.set(key, (tokens - 1.0, self._clock.time()))

    def forget(self, key: str) -> None:
        """Drop `key`'s bucket (its owner is gone: a closed connection)."""
        self._buckets.pop(key, None)
