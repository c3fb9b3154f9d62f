"""Canonical JSON (appendices: "Canonical JSON"), the bytes every hash and signature covers;
and reading JSON, which every request body, filter and event from another server goes through."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

# Canonical JSON only allows integers in the range [-(2**53)+1, (2**53)-1].
MAX_SAFE_INTEGER = 2**53 - 1


class CanonicalJsonError(ValueError):
    pass


def check_canonical_values(value: Any, path: str = "") -> None:
    """Raise CanonicalJsonError for floats, out-of-range integers, NaN and non-string keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalJsonError(f"integer out of range at {path or 'top level'}")
        return
    if isinstance(value, float):
        raise CanonicalJsonError(f"floats are not allowed at {path or 'top level'}")
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise CanonicalJsonError(f"non-string key at {path or 'top level'}")
            check_canonical_values(child, f"{path}.{key}" if path else key)
        return
    if isinstance(value, list | tuple):
        for index, child in enumerate(value):
            check_canonical_values(child, f"{path}[{index}]")
        return
    raise CanonicalJsonError(f"unsupported value of type {type(value).__name__} at {path}")


def encode_canonical_json(value: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8, no escaping of non-ASCII."""
    return json.dumps(
        value,
        ensure_ascii=False,
        separators=(",", ":"),
        sort_keys=True,
        allow_nan=False,
    ).encode("utf-8")


def load_json(raw: bytes | str, parse_float: Callable[[str], Any] | None = None) -> Any:
    """Parse JSON, and only JSON: `NaN` and `Infinity`, which Python's parser accepts, are
    refused, and so are numbers too large for a float (`1e999`, which would parse as
    infinity and could never be written back as JSON). Any failure, nesting too deep for
    the parser included, is a ValueError."""

    def reject_constant(name: str) -> Any:
        raise CanonicalJsonError(f"{name} is not valid JSON")

    def finite_float(text: str) -> Any:
        value = parse_float(text) if parse_float is not None else float(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise CanonicalJsonError(f"{text[:50]} is out of range")
        return value

    try:
        return json.loads(raw, parse_float=finite_float, parse_constant=reject_constant)
    except RecursionError:
        raise CanonicalJsonError("JSON is nested too deeply") from None


def parse_json(raw: bytes | str) -> Any:
    """Parse JSON as Matrix sees it: integral floats like `1e10` or `-0` become integers."""

    def parse_float(text: str) -> Any:
        number = float(text)
        if number.is_integer():
            return int(number)
        return number

    return load_json(raw, parse_float=parse_float)
