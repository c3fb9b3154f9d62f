"""Stream positions: `current` never passes what was written."""

from twisted.trial import unittest

from storage.stream_ids import StreamIdGenerator


class StreamIds(unittest.TestCase):
    async def test_current_waits_for_earlier_positions(self):
        gen = StreamIdGenerator("t", 5)
        first = gen.next()
        second = gen.next()
        a = await first.__aenter__()
        b = await second.__aenter__()
        self.assertEqual((a, b), (6, 7))
        await second.__aexit__(None, None, None)
        self.assertEqual(gen.current, 5)  # 6 is still being written
        await first.__aexit__(None, None, None)
        self.assertEqual(gen.current, 7)

    async def test_failed_or_unused_last_position_is_handed_back(self):
        gen = StreamIdGenerator("t", 5)
        with self.assertRaises(ValueError):
            async with gen.next():
                raise ValueError("write failed")
        self.assertEqual(gen.current, 5)
        async with gen.next() as position:
            gen.unused(position)
        self.assertEqual(gen.current, 5)
        async with gen.next() as position:
            self.assertEqual(position, 6)
        self.assertEqual(gen.current, 6)

    async def test_gap_below_a_written_position_is_kept(self):
        gen = StreamIdGenerator("t", 0)
        first, second = gen.next(), gen.next()
        a = await first.__aenter__()
        b = await second.__aenter__()
        gen.unused(a)  # not the last: stays a gap
        await first.__aexit__(None, None, None)
        await second.__aexit__(None, None, None)
        self.assertEqual((a, b, gen.current), (1, 2, 2))
