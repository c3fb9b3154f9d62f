"""The shared parsers: integer query parameters (`parse_int_query`, used by /messages,
/context, /publicRooms and /sync) and JSON (`load_json`, behind request bodies, inline
filters and events from other servers)."""

from __future__ import annotations

from typing import Any

from twisted.trial import unittest

from client_api.http import parse_int_query
from homeserver.errors import MatrixError
from homeserver.events.canonical import load_json, parse_json


class _Request:
    """Just what `query_string` reads of a request: its decoded-once query arguments."""

    def __init__(self, **query: str) -> None:
        self.args = {k.encode(): [v.encode()] for k, v in query.items()}


def parse(default: int | None = 7, **kwargs: Any) -> int | None:
    query = kwargs.pop("query", {})
    return parse_int_query(_Request(**query), "limit", default, **kwargs)  # type: ignore[arg-type]


class ParseIntQueryTests(unittest.TestCase):
    def assertInvalid(self, **kwargs: Any) -> None:
        with self.assertRaises(MatrixError) as cm:
            parse(**kwargs)
        self.assertEqual((cm.exception.http_code, cm.exception.errcode), (400, "M_INVALID_PARAM"))

    def test_absent_or_empty_gives_the_default(self) -> None:
        self.assertEqual(parse(), 7)
        self.assertIsNone(parse(default=None))
        self.assertEqual(parse(query={"limit": ""}), 7)
        self.assertEqual(parse(query={"other": "3"}), 7)

    def test_integers(self) -> None:
        for raw, value in (("0", 0), ("42", 42), ("-5", -5), ("007", 7), ("9" * 18, int("9" * 18))):
            self.assertEqual(parse(query={"limit": raw}), value, raw)

    def test_anything_else_is_invalid(self) -> None:
        for raw in ("x", "1.5", "1e3", " 1", "1 ", "+1", "--1", "1_000", "٣", "9" * 19):
            self.assertInvalid(query={"limit": raw})

    def test_below_the_minimum_is_invalid(self) -> None:
        self.assertEqual(parse(query={"limit": "0"}, min_value=0), 0)
        self.assertInvalid(query={"limit": "-1"}, min_value=0)

    def test_above_the_maximum_is_capped(self) -> None:
        self.assertEqual(parse(query={"limit": "1000"}, max_value=1000), 1000)
        self.assertEqual(parse(query={"limit": "1001"}, max_value=1000), 1000)
        self.assertEqual(parse(query={"limit": "-3"}, max_value=1000), -3)


class LoadJsonTests(unittest.TestCase):
    def test_json_is_parsed(self) -> None:
        self.assertEqual(load_json('{"a": [1, 2.5, null, true]}'), {"a": [1, 2.5, None, True]})
        self.assertEqual(load_json(b'{"a": 1.0}'), {"a": 1.0})

    def test_what_python_accepts_beyond_json_is_refused(self) -> None:
        for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": -Infinity}'):
            with self.assertRaises(ValueError):
                load_json(text)

    def test_numbers_too_large_for_a_float_are_refused(self) -> None:
        # 1e999 would parse as infinity, which can never be written back as JSON.
        for text in ('{"a": 1e999}', '{"a": -1e999}', '[1.5e400]'):
            with self.assertRaises(ValueError):
                load_json(text)
            with self.assertRaises(ValueError):
                parse_json(text)
        self.assertEqual(load_json('{"a": 1e308}'), {"a": 1e308})

    def test_every_failure_is_a_value_error(self) -> None:
        for text in ("", "{", "[1,]", "[" * 100_000 + "]" * 100_000):
            with self.assertRaises(ValueError):
                load_json(text)

    def test_parse_json_also_turns_integral_floats_into_integers(self) -> None:
        self.assertEqual(parse_json('{"a": 1e2, "b": -0.0, "c": 1.5}'), {"a": 100, "b": 0, "c": 1.5})
        with self.assertRaises(ValueError):
            parse_json('{"a": NaN}')
