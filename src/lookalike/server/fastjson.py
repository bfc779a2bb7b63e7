"""JSON in and out of the busiest routes: orjson where it is installed (the ``server`` extra
brings it), the standard library otherwise, with the same values and errors either way."""

from __future__ import annotations

import importlib
import json
from typing import Any


def _optional(name: str) -> Any:
    """The module ``name``, or None where it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


orjson = _optional("orjson")  # None: a pure-Python install, the standard library does it all

# orjson reads integers past 64 bits as floats where the standard library keeps them exact
# (an id of 2**70 must stay an integer to be refused as one): bodies with an integer part of
# 19 digits or more go the slow way. Runs of 19 digits after a float's point or in its
# exponent are common in vectors (0.00012345678901234567) and do not count. CLASSES maps each
# byte to its class: a digit to "0", a byte that may come before a float's later digits to
# ".", any other to "S"; an integer part of 19 digits is then "S" and 19 "0"s, or starts the
# body.
CLASSES = bytes(
    ord("0") if chr(b).isdigit() and b < 128 else ord(".") if b in b".eE+" else ord("S")
    for b in range(256)
)
LONG_RUN = b"0" * 19


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
    classes = raw.translate(CLASSES)
    return classes.startswith(LONG_RUN) or b"S" + LONG_RUN in classes
