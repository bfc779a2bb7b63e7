"""JSON in and out of the busiest routes: orjson where it is installed (the ``server`` extra
brings it), the standard library otherwise, with the same values and errors either way."""

from __future__ import annotations

import json
import re
from typing import Any

try:
    import orjson
except ImportError:  # a pure-Python install: the standard library does it all, slower
    orjson = None  # type: ignore[assignment]

# orjson reads integers past 64 bits as floats where the standard library keeps them exact
# (an id of 2**70 must stay an integer to be refused as one): bodies with an integer part of
# 19 digits or more go the slow way. Runs of 19 digits after a float's point or in its
# exponent are common in vectors (0.00012345678901234567) and do not count.
DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
LONG_RUN = b"0" * 19
NOT_AN_INTEGER_PART = frozenset(b".eE+")


def loads(raw: str | bytes) -> Any:
    """``raw`` parsed exactly as ``json.loads`` parses it, by orjson when it can: anything
    orjson refuses (NaN, 1e400, lone surrogates, a BOM, deep nesting) is parsed again by the
    standard library, whose values and errors are the API's."""
    if orjson is not None and isinstance(raw, bytes) and not _long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON of plain values (dicts with string keys, lists, str, int, float,
    bool, None), NaN and infinities as null, as pydantic writes them. Raises TypeError or
    ValueError for what it cannot write (a numpy scalar, an integer past 64 bits; without
    orjson, NaN), so that the caller can take pydantic's slower way."""
    if orjson is not None:
        return orjson.dumps(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _long_integer(raw: bytes) -> bool:
    """Whether ``raw`` may hold an integer of 19 digits or more (or a float whose integer
    part is that long), found at C speed: a regular expression backtracks over every digit."""
    digits = raw.translate(DIGITS_AS_ZERO)
    start = digits.find(LONG_RUN)
    while start != -1:
        if start == 0 or raw[start - 1] not in NOT_AN_INTEGER_PART:
            return True
        end = start + len(LONG_RUN)
        while end < len(digits) and digits[end] == ord("0"):  # to the end of this run
            end += 1
        start = digits.find(LONG_RUN, end)
    return False
