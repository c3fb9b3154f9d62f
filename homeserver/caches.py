"""The one in-memory cache type: a dict bounded to a number of entries, forgetting the least
recently used first, optionally forgetting entries after a time to live, and measured.

Every cache in the process reports, by its name, to Prometheus:

- `heddle_cache_size{cache}`: entries held now (summed over live caches of that name: a
  test process may run several servers);
- `heddle_cache_max_size{cache}`: the bound;
- `heddle_cache_hits_total{cache}`, `heddle_cache_misses_total{cache}`: lookups through
  `get` (an entry past its time to live is a miss);
- `heddle_cache_evictions_total{cache}`: entries dropped to stay within the bound.

Other bounded in-memory indexes (say, `StreamChangeCache`) report their size with
`report_size`, so `heddle_cache_size` covers everything the process keeps per user, room,
token or device.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from homeserver.clock import Clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
D = TypeVar("D")
T = TypeVar("T")

CACHE_HITS = Counter("heddle_cache_hits_total", "Cache lookups that found an entry", ["cache"])
CACHE_MISSES = Counter(
    "heddle_cache_misses_total", "Cache lookups that found no entry, or an expired one", ["cache"]
)
CACHE_EVICTIONS = Counter(
    "heddle_cache_evictions_total",
    "Cache entries dropped to keep the cache within its bound",
    ["cache"],
)


class _SizeCollector(Collector):
    """Reads the sizes at scrape time, so keeping the gauges current costs nothing per
    write. Holds what it measures weakly: a stopped server's caches leave with it."""

    def __init__(self) -> None:
        # What is measured -> (cache name, bound, how to measure it). The value must not
        # refer to its key, or the key would never be collected.
        self._measured: weakref.WeakKeyDictionary[Any, tuple[str, int, Callable[[Any], int]]] = (
            weakref.WeakKeyDictionary()
        )

    def add(self, owner: Any, name: str, max_size: int, size: Callable[[Any], int]) -> None:
        self._measured[owner] = (name, max_size, size)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        sizes: dict[str, int] = {}
        max_sizes: dict[str, int] = {}
        for owner, (name, max_size, size) in list(self._measured.items()):
            sizes[name] = sizes.get(name, 0) + size(owner)
            max_sizes[name] = max_sizes.get(name, 0) + max_size
        size_family = GaugeMetricFamily(
            "heddle_cache_size", "Entries held in an in-memory cache", labels=["cache"]
        )
        max_family = GaugeMetricFamily(
            "heddle_cache_max_size", "The most entries an in-memory cache holds", labels=["cache"]
        )
        for name in sorted(sizes):
            size_family.add_metric([name], sizes[name])
            max_family.add_metric([name], max_sizes[name])
        yield size_family
        yield max_family


_SIZES = _SizeCollector()
REGISTRY.register(_SIZES)


def report_size(owner: T, name: str, max_size: int, size: Callable[[T], int]) -> None:
    """Report `size(owner)` as `heddle_cache_size{cache=name}` (and `max_size` as its bound)
    for as long as `owner` lives. `size` must not hold `owner` itself."""
    _SIZES.add(owner, name, max_size, size)


def keep_newer_half(positions: dict[K, int]) -> tuple[dict[K, int], int]:
    """For indexes of stream positions bounded by forgetting their older half: the entries
    above the median position, and that position (the highest one forgotten)."""
    cutoff = sorted(positions.values())[len(positions) // 2]
    return {key: p for key, p in positions.items() if p > cutoff}, cutoff


_MISSING = object()


class LruCache(Generic[K, V]):
    """At most `max_size` entries; setting one more drops the least recently used (read with
    `get` or set). With `ttl_s`, an entry is forgotten that long after it was set (read on
    `clock`). Not thread-safe: use it from the reactor thread."""

    def __init__(
        self, name: str, max_size: int, *, ttl_s: float | None = None, clock: Clock | None = None
    ) -> None:
        if max_size < 1:
            raise ValueError(f"cache {name}: max_size must be at least 1")
        if ttl_s is not None and clock is None:
            raise ValueError(f"cache {name}: a time to live needs a clock")
        self.name = name
        self.max_size = max_size
        self._ttl_s = ttl_s
        self._clock = clock
        # key -> value, least recently used first.
        self._entries: OrderedDict[K, V] = OrderedDict()
        # key -> when it was set, with a time to live only (no per-entry cost otherwise).
        self._set_at: dict[K, float] | None = {} if ttl_s is not None else None
        self._hits = CACHE_HITS.labels(name)
        self._misses = CACHE_MISSES.labels(name)
        self._evictions = CACHE_EVICTIONS.labels(name)
        report_size(self, name, max_size, len)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        """The keys held (expired ones included), least recently used first."""
        return list(self._entries)

    def __contains__(self, key: K) -> bool:
        """Held and not expired; neither counted nor a use."""
        return self._fresh(key)

    def _fresh(self, key: K) -> bool:
        """Whether `key` is held and within its time to live (an expired entry is dropped)."""
        if key not in self._entries:
            return False
        if self._set_at is not None and self._clock is not None and self._ttl_s is not None:
            if self._clock.time() - self._set_at[key] >= self._ttl_s:
                del self._entries[key]
                del self._set_at[key]
                return False
        return True

    @overload
    def get(self, key: K) -> V | None: ...
    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: object = None) -> object:
        """The value, as a use of the entry (counted as a hit), or `default` (a miss)."""
        if not self._fresh(key):
            self._misses.inc()
            return default
        self._entries.move_to_end(key)
        self._hits.inc()
        return self._entries[key]

    def get_many(self, keys: Iterable[K]) -> tuple[dict[K, V], list[K]]:
        """The values held for `keys` (each lookup counted, as `get`), and the keys not
        held, in the order given."""
        found: dict[K, V] = {}
        missing: list[K] = []
        entries = self._entries
        expires = self._set_at is not None
        for key in keys:
            # `get`, inlined, and counted once for all (a sync asks about thousands of keys).
            if key in entries and (not expires or self._fresh(key)):
                entries.move_to_end(key)
                found[key] = entries[key]
            else:
                missing.append(key)
        if found:
            self._hits.inc(len(found))
        if missing:
            self._misses.inc(len(missing))
        return found, missing

    @overload
    def peek(self, key: K) -> V | None: ...
    @overload
    def peek(self, key: K, default: D) -> V | D: ...

    def peek(self, key: K, default: object = None) -> object:
        """The value without counting the lookup or making it a use (for checks and
        in-place updates)."""
        return self._entries[key] if self._fresh(key) else default

    def set(self, key: K, value: V) -> None:
        self._entries[key] = value
        self._entries.move_to_end(key)
        if self._set_at is not None and self._clock is not None:
            self._set_at[key] = self._clock.time()
        while len(self._entries) > self.max_size:
            evicted, _ = self._entries.popitem(last=False)
            if self._set_at is not None:
                del self._set_at[evicted]
            self._evictions.inc()

    def replace(self, key: K, value: V) -> None:
        """Change a held entry's value, keeping its place and age; nothing if not held."""
        if key in self._entries:
            self._entries[key] = value

    @overload
    def pop(self, key: K) -> V | None: ...
    @overload
    def pop(self, key: K, default: D) -> V | D: ...

    def pop(self, key: K, default: object = None) -> object:
        if self._set_at is not None:
            self._set_at.pop(key, None)
        return self._entries.pop(key, default)  # type: ignore[arg-type]

    def pop_where(self, predicate: Callable[[K, V], bool]) -> None:
        """Forget every entry for which `predicate(key, value)` holds (a linear scan)."""
        for key in [k for k, v in self._entries.items() if predicate(k, v)]:
            self.pop(key)

    def clear(self) -> None:
        self._entries.clear()
        if self._set_at is not None:
            self._set_at.clear()
