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

    def _refill(self, key: str, rate: float, burst: float) -> float:
        now = self._clock.time()
        tokens, last = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        self._buckets.set(key, (tokens, now))
        return tokens

    def check(
        self, key: str, per_second: float | None = None, burst_count: int | None = None
    ) -> None:
        """Take one action from `key`'s bucket, or raise 429 M_LIMIT_EXCEEDED.

        `per_second` and `burst_count` replace the configured limit for this key (an admin's
        override for one user); `per_second=0` means no limit for it at all."""
        if not self._enabled or per_second == 0:
            return
        self.check_only(key, per_second, burst_count)
        burst = float(burst_count if burst_count is not None else self._burst)
        tokens, now = self._buckets.peek(key, (burst, self._clock.time()))
        self._buckets.set(key, (tokens - 1.0, now))

    def check_only(
        self, key: str, per_second: float | None = None, burst_count: int | None = None
    ) -> None:
        """Raise 429 if `key` has no action left, without using one up."""
        if not self._enabled or per_second == 0:
            return
        rate = per_second if per_second is not None else self._rate
        tokens = self._refill(
            key, rate, float(burst_count if burst_count is not None else self._burst)
        )
        if tokens < 1.0:
            metrics.RATE_LIMITED.labels(self.name).inc()
            retry_after_ms = int((1.0 - tokens) / rate * 1000) + 1
            raise LimitExceededError(retry_after_ms)

    def record(self, key: str) -> None:
        """Use up one action without checking (e.g. count a failure after the fact)."""
        if not self._enabled:
            return
        tokens = self._refill(key, self._rate, float(self._burst))
        self._buckets.set(key, (tokens - 1.0, self._clock.time()))

    def forget(self, key: str) -> None:
        """Drop `key`'s bucket (its owner is gone: a closed connection)."""
        self._buckets.pop(key, None)
