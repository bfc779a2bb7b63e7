"""The Query value: one validation, JSON in and out, and the API's schema kept in step."""

from __future__ import annotations

import ast
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import BadInputError, Query, QueryPart
from lookalike.query import DEFAULT_K, MAX_K, OPTIONS, QUERY_KINDS
from lookalike.server.schemas import SearchBody

SRC = Path(__file__).resolve().parents[1] / "src" / "lookalike"


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), "red").save(buffer, format="PNG")
    return buffer.getvalue()


def test_keywords_build_parts_and_options() -> None:
    query = Query.build(text="a cat", id=[3, np.int64(9)], k=7, filter={"split": "val"})
    assert query.parts == (
        QueryPart("text", "a cat"),
        QueryPart("id", 3),
        QueryPart("id", 9),
    )
    assert (query.k, dict(query.filter or {}), query.query_ids) == (7, {"split": "val"}, [3, 9])
    assert Query.build(id=3, include_self=True).query_ids == []
    assert Query.build(text="x").k == DEFAULT_K
    # a Query passes through, with the options given replacing its own
    assert Query.build(query, k=3) == Query(query.parts, 3, query.filter)


def test_json_round_trip_reads_images_once_encoded(tmp_path: Path) -> None:
    picture = tmp_path / "q.png"
    picture.write_bytes(png())
    query = Query.build(
        [{"image": picture, "weight": 0.5}, {"vector": np.ones(4), "weight": -1}],
        text="night",
        k=5,
        filter={"n": 2, "ok": True, "none": None},
        exclude_ids=[1, 2],
        include_self=True,
        dedupe=0.9,
        model="vectors:4",
    )
    body = Query.from_json(query.to_json())
    assert body.to_json() == query.to_json()
    image = next(p for p in body.parts if p.kind == "image")
    assert image.value == png() and image.weight == 0.5
    assert body.exclude_ids == (1, 2) and body.dedupe == 0.9 and body.include_self
    # defaults are left out of the JSON, and one kind may sit at the top level
    assert Query.build(text="x").to_json() == {"query": [{"text": "x"}]}
    assert Query.from_json({"text": "x", "k": 3}) == Query((QueryPart("text", "x"),), 3)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "give a query"),
        ({"text": 5}, "text query must be a string"),
        ({"text": "x" * 2001}, "at most 2000"),
        ({"id": True}, "integer ids"),
        ({"id": "3"}, "integer ids"),
        ({"text": "x", "k": 0}, "k must be"),
        ({"text": "x", "k": MAX_K + 1}, "k must be"),
        ({"text": "x", "k": True}, "k must be"),
        ({"text": "x", "k": None}, "k must be"),
        ({"text": "x", "exclude_ids": [True]}, "integer ids"),
        ({"text": "x", "exclude_ids": "12"}, "list of integer ids"),
        ({"text": "x", "dedupe": 0}, "dedupe"),
        ({"text": "x", "dedupe": math.nan}, "dedupe"),
        ({"text": "x", "filter": [1]}, "filter must map"),
        ({"text": "x", "filter": {"a": math.nan}}, "finite"),
        ({"text": "x", "filter": {"a": math.inf}}, "finite"),
        ({"text": "x", "filter": {"a": 2**64}}, "64-bit"),
        ({"text": "x", "filter": {"a\0b": 1}}, "NUL"),
        ({"text": "x", "filter": {3: 1}}, "strings"),
        ({"text": "x", "filter": {"a": [1]}}, "string, number or bool"),
        ({"text": "x", "filter": {str(i): i for i in range(101)}}, "at most 100 keys"),
        ({"text": "x", "include_self": "yes"}, "include_self"),
        ({"text": "x", "colour": "red"}, "unknown search argument"),
        ({"query": [{"text": "x", "weight": math.inf}]}, "weight"),
        ({"query": [{"text": "x", "id": 1}]}, "exactly one"),
        ({"query": {"text": "x"}}, "list of parts"),
    ],
)
def test_one_validation_names_the_problem(arguments: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        Query.build(**arguments)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"text": "x", "colour": "red"}, "unknown search field"),
        ({"query": [{"image": 5}]}, "base64"),
        ({"image": "not base64!"}, "base64"),  # a bad value, not off-schema: 400
        ({"query": [{"text": "x"}] * 65}, "at most 64 parts"),
        ({"id": True}, "integer ids"),
    ],
)
def test_from_json_refuses_bad_bodies(body: object, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        Query.from_json(body)


def test_api_schema_matches_the_query() -> None:
    """The OpenAPI body documents exactly the fields that Query.from_json reads."""
    assert set(SearchBody.model_fields) == {*OPTIONS, "query", *QUERY_KINDS}


def test_no_import_cycles_inside_the_package() -> None:
    """Imports between lookalike's modules form no circle, counting those inside functions
    and TYPE_CHECKING blocks: a lazy import hides a circle, it does not remove it."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        module = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.level else (node.module or "")
                targets = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[module] |= {t for t in targets if t.startswith("lookalike")}
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    # a package's __init__ importing its own children is not a circle through them
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return [*trail, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
        return None

    cycles = [c for c in (cycle_from(m) for m in sorted(graph)) if c]
    assert not cycles, f"import circles: {cycles[:3]}"


def test_tests_share_helpers_through_a_module_not_conftest() -> None:
    """Importing names from conftest is ambiguous once a folder has a conftest of its own."""
    tests, needle = Path(__file__).resolve().parent, "from " + "conftest import"
    offenders = [p.name for p in tests.rglob("*.py") if needle in p.read_text(encoding="utf-8")]
    assert not offenders, offenders
