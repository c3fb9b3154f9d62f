"""StreamChangeCache: which entities changed after a position, answered from memory."""

from __future__ import annotations

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
