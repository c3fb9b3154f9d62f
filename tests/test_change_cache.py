"""StreamChangeCache: which entities changed after a position, answered from memory."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from homeserver.sync.change_cache import StreamChangeCache


class ChangedSince(unittest.TestCase):
    def setUp(self) -> None:
        self.cache = StreamChangeCache("test", 10)
        for position, entity in enumerate(["a", "b", "c"], start=11):
            self.cache.entity_changed(entity, position)

    def test_lists_sets_and_views_give_the_same_answer(self) -> None:
        # More entities asked about than the cache holds, and fewer: both code paths.
        many = [f"x{i}" for i in range(50)] + ["a", "c"]
        for entities in (many, set(many), dict.fromkeys(many).keys(), ["c", "x1"]):
            with self.subTest(kind=type(entities).__name__, size=len(entities)):
                expected = {"c"} if len(entities) == 2 else {"a", "c"}
                self.assertEqual(self.cache.changed_since(entities, 10), expected)
                self.assertEqual(self.cache.changed_since(entities, 12), {"c"})

    def test_position_before_what_is_known_cannot_tell(self) -> None:
        self.assertIsNone(self.cache.changed_since(["a"], 9))


class MatchesAFullScan(unittest.TestCase):
    """The position-ordered index answers exactly what scanning every entity would."""

    @settings(max_examples=200, deadline=None)
    @given(
        changes=st.lists(
            st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=1, max_value=60)),
            max_size=80,
        ),
        max_entities=st.integers(min_value=2, max_value=10),
        asked=st.lists(st.sampled_from("abcdefghxyz"), max_size=12),
        position=st.integers(min_value=0, max_value=61),
    )
    def test_answers_as_a_scan(
        self,
        changes: list[tuple[str, int]],
        max_entities: int,
        asked: list[str],
        position: int,
    ) -> None:
        cache = StreamChangeCache("test", 0, max_entities=max_entities)
        # What a cache without the index knows: each entity's latest position, the older
        # half forgotten whenever it holds too many.
        latest: dict[str, int] = {}
        earliest = 0
        for entity, at in changes:  # positions out of order too, as commits may publish
            cache.entity_changed(entity, at)
            if at > latest.get(entity, earliest):
                latest[entity] = at
                if len(latest) > max_entities:
                    cutoff = sorted(latest.values())[len(latest) // 2]
                    latest = {e: p for e, p in latest.items() if p > cutoff}
                    earliest = max(earliest, cutoff)
        if position < earliest:
            self.assertIsNone(cache.all_changed_since(position))
            self.assertIsNone(cache.changed_since(asked, position))
            return
        changed = {e for e, p in latest.items() if p > position}
        self.assertEqual(cache.all_changed_since(position), changed)
        self.assertEqual(cache.changed_since(asked, position), changed & set(asked))
        self.assertEqual(
            cache.changed_since(list("abcdefghijklmnop"), position), changed
        )
