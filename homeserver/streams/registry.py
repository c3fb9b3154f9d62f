"""Live streams: each stream's position allocator, the position readers may see, its change
indexes and how it is loaded at start-up; and the registry that holds them in token order.

`HomeServer` builds one registry from the declarations; sync tokens are read and written,
start-up positions loaded, and the current sync token computed through it, so a stream
declared in `homeserver/streams/declarations.py` needs no wiring anywhere else for those.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Protocol

from homeserver.streams.declarations import StreamDeclaration, StreamStores
from homeserver.sync.change_cache import StreamChangeCache
from homeserver.sync.tokens import StreamToken
from storage.stream_ids import MemoryStreamIdGenerator, StreamIdGenerator


class StreamPositions(Protocol):
    """What the registry needs of an allocator (`StreamIdGenerator`,
    `MemoryStreamIdGenerator`)."""

    name: str

    @property
    def current(self) -> int: ...

    def initialise(self, current: int) -> None: ...

    def on_advance(self, listener: Callable[[], None]) -> None: ...


class Stream:
    """One stream. Writers take positions from `ids`; readers see `current`, the highest
    position below which every write has committed (never one still in flight)."""

    def __init__(
        self,
        name: str,
        ids: StreamPositions,
        *,
        room_changes: StreamChangeCache | None = None,
        user_changes: StreamChangeCache | None = None,
        load_max: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.name = name
        self.ids = ids
        # Which rooms / users changed after a position, from memory (see StreamChangeCache).
        self.room_changes = room_changes
        self.user_changes = user_changes
        self._load_max = load_max

    @property
    def current(self) -> int:
        return self.ids.current

    # Typed views for the stream's writer and readers, which know what the stream keeps.

    def id_generator(self) -> StreamIdGenerator:
        """The database-backed allocator (`async with ids.next() as position`)."""
        if not isinstance(self.ids, StreamIdGenerator):
            raise TypeError(f"stream {self.name} is not numbered by a StreamIdGenerator")
        return self.ids

    def memory_ids(self) -> MemoryStreamIdGenerator:
        if not isinstance(self.ids, MemoryStreamIdGenerator):
            raise TypeError(f"stream {self.name} is not held in memory")
        return self.ids

    def rooms_index(self) -> StreamChangeCache:
        if self.room_changes is None:
            raise TypeError(f"stream {self.name} keeps no change index by room")
        return self.room_changes

    def users_index(self) -> StreamChangeCache:
        if self.user_changes is None:
            raise TypeError(f"stream {self.name} keeps no change index by user")
        return self.user_changes

    async def load(self) -> None:
        """Resume from the highest position in the database (at start-up, before writes)."""
        if self._load_max is None:
            return
        position = await self._load_max()
        self.ids.initialise(position)
        for changes in (self.room_changes, self.user_changes):
            if changes is not None:
                changes.initialise(position)

    def record_changes(self, position: int, rooms: Iterable[str], users: Iterable[str]) -> None:
        if self.room_changes is not None:
            for room_id in rooms:
                self.room_changes.entity_changed(room_id, position)
        if self.user_changes is not None:
            for user_id in users:
                self.user_changes.entity_changed(user_id, position)


def build_stream(declaration: StreamDeclaration, stores: StreamStores) -> Stream:
    """A live stream for a declaration: a database-backed allocator if it loads its
    position from a store, an in-memory one otherwise."""
    ids: StreamPositions
    load = declaration.load_max
    if load is None:
        ids = MemoryStreamIdGenerator(declaration.name)
    else:
        ids = StreamIdGenerator(declaration.name, 0)

    def index(name: str | None) -> StreamChangeCache | None:
        return StreamChangeCache(name, 0) if name is not None else None

    return Stream(
        declaration.name,
        ids,
        room_changes=index(declaration.room_index),
        user_changes=index(declaration.user_index),
        load_max=(lambda: load(stores)) if load is not None else None,
    )


class StreamRegistry:
    """The streams, in sync-token order."""

    def __init__(self, streams: Iterable[Stream]) -> None:
        self._streams: dict[str, Stream] = {}
        for stream in streams:
            if stream.name in self._streams:
                raise ValueError(f"stream {stream.name!r} declared twice")
            self._streams[stream.name] = stream
        self.names: tuple[str, ...] = tuple(self._streams)

    @classmethod
    def build(
        cls, declarations: Sequence[StreamDeclaration], stores: StreamStores
    ) -> StreamRegistry:
        return cls(build_stream(d, stores) for d in declarations)

    def __getitem__(self, name: str) -> Stream:
        return self._streams[name]

    def __iter__(self) -> Iterator[Stream]:
        return iter(self._streams.values())

    def __contains__(self, name: object) -> bool:
        return name in self._streams

    async def load(self) -> None:
        """Every stream resumes from the database (`HomeServer.setup`)."""
        for stream in self:
            await stream.load()

    def current_token(self) -> StreamToken:
        """What readers may see of every stream now."""
        return StreamToken.from_positions(
            self.names, tuple([s.current for s in self._streams.values()])
        )

    def token(self, **positions: int) -> StreamToken:
        return StreamToken.of(self.names, positions)

    def parse_token(self, raw: str) -> StreamToken:
        """A client's sync token; 400 M_INVALID_PARAM if it is not one of ours."""
        return StreamToken.parse(raw, self.names)
