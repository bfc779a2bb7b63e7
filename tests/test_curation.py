"""Curation: relevance feedback, diverse results and match counts, through the library, the
CLI, the HTTP API and the client, on collections of constructed vectors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from helpers import serve_app
from lookalike import Client, Collection, InvalidQueryError, NotFoundError
from lookalike.cli import app as cli_app
from lookalike.server import create_app

runner = CliRunner()


@dataclass
class Concept:
    """Two clusters (dims 0 and 1) that a hidden concept (the sign of dim 2) cuts across."""

    col: Collection
    path: Path
    vectors: np.ndarray
    wanted: np.ndarray  # the concept, per id
    cluster: np.ndarray
    relevant: list[int]
    irrelevant: list[int]


@pytest.fixture(scope="module")
def concept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Concept]:
    rng = np.random.default_rng(1)
    n, dim = 1200, 16
    cluster = rng.integers(0, 2, n)
    vectors = rng.normal(0, 0.15, (n, dim))
    vectors[:, 0] += cluster == 0
    vectors[:, 1] += cluster == 1
    wanted = vectors[:, 2] > 0
    clear = np.abs(vectors[:, 2]) > 0.1
    path = tmp_path_factory.mktemp("curation") / "col"
    col = Collection.create(path, f"vectors:{dim}")
    metadata = [{"split": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    col.add_vectors(vectors.astype(np.float32), [f"v{i}" for i in range(n)], metadata=metadata)
    relevant = [int(i) for i in np.flatnonzero(wanted & clear)[:10]]
    irrelevant = [int(i) for i in np.flatnonzero(~wanted & clear)[:10]]
    yield Concept(col, path, vectors, wanted, cluster, relevant, irrelevant)
    col.close()


def precision(concept: Concept, hits: list) -> float:
    return float(np.mean([concept.wanted[h.id] for h in hits]))


def test_feedback_finds_what_the_centroid_misses(concept: Concept) -> None:
    col, relevant, irrelevant = concept.col, concept.relevant, concept.irrelevant
    centroid = col.search(id=relevant, exclude_ids=irrelevant, k=60)
    model = col.search(relevant=relevant, irrelevant=irrelevant, k=60)
    assert len(model) == 60
    assert precision(concept, model) >= 0.95
    assert precision(concept, centroid) <= 0.85
    # both clusters hold the concept: the model finds it in each
    assert {concept.cluster[h.id] for h in model} == {0, 1}
    assert not {h.id for h in model} & {*relevant, *irrelevant}  # marks are left out
    assert all(0 <= h.score <= 1 for h in model)  # a probability
    assert [h.score for h in model] == sorted((h.score for h in model), reverse=True)
    # deterministic: the background sample is seeded
    assert [h.id for h in col.search(relevant=relevant, irrelevant=irrelevant, k=60)] == [
        h.id for h in model
    ]


def test_positive_marks_alone_search_by_their_centroid(concept: Concept) -> None:
    col, relevant = concept.col, concept.relevant
    marked = col.search(relevant=relevant, k=30)
    assert [h.id for h in marked] == [h.id for h in col.search(id=relevant, k=30)]


def test_feedback_with_a_query_and_with_options(concept: Concept) -> None:
    col, relevant, irrelevant = concept.col, concept.relevant, concept.irrelevant
    vector = concept.vectors[relevant[0]].tolist()
    hits = col.search(vector=vector, relevant=relevant[1:], irrelevant=irrelevant, k=40)
    assert precision(concept, hits) >= 0.9
    odd = col.search(
        relevant=relevant, irrelevant=irrelevant, k=40, filter={"split": "odd"}, exclude_ids=[1]
    )
    assert odd and all(h.metadata["split"] == "odd" and h.id != 1 for h in odd)
    # only irrelevant marks, with a query: the query is the one positive
    hits = col.search(vector=vector, irrelevant=irrelevant, k=20)
    assert not {h.id for h in hits} & set(irrelevant)


def test_bad_marks_are_refused_clearly(concept: Concept) -> None:
    col, relevant = concept.col, concept.relevant
    with pytest.raises(NotFoundError, match=r"marked ids not stored: 99999, 123456"):
        col.search(relevant=[relevant[0], 99999], irrelevant=[123456])
    with pytest.raises(InvalidQueryError, match="relevant ids"):
        col.search(relevant=[])
    with pytest.raises(InvalidQueryError, match="irrelevant marks alone"):
        col.search(irrelevant=[3])
    with pytest.raises(InvalidQueryError, match=f"both relevant and irrelevant: {relevant[0]}"):
        col.search(relevant=relevant, irrelevant=[relevant[0]])
    with pytest.raises(InvalidQueryError, match="relevant must hold integer ids"):
        col.search(relevant=["7"])
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InvalidQueryError, match="diverse"):
            col.search(id=relevant[0], diverse=bad)


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collection, np.ndarray]]:
    """60 near-copies of one picture next to the query, and 5 other groups a little further."""
    rng = np.random.default_rng(2)
    dim = 8
    rows, group = [], []
    for g in range(6):
        centre = np.zeros(dim)
        centre[0] = 1.0
        if g:
            centre[g] = 0.6
        count = 60 if g == 0 else 12
        rows.append(centre + rng.normal(0, 0.01 if g == 0 else 0.05, (count, dim)))
        group += [g] * count
    col = Collection.create(tmp_path_factory.mktemp("groups") / "col", f"vectors:{dim}")
    vectors = np.concatenate(rows).astype(np.float32)
    col.add_vectors(vectors, [f"g{i}" for i in range(len(vectors))])
    yield col, np.array(group)
    col.close()


def test_diverse_covers_the_groups_instead_of_near_copies(
    groups: tuple[Collection, np.ndarray],
) -> None:
    col, group = groups
    query = [1.0] + [0.0] * 7
    plain = col.search(vector=query, k=10)
    assert {group[h.id] for h in plain} == {0}
    assert [h.id for h in col.search(vector=query, k=10, diverse=0)] == [h.id for h in plain]
    varied = col.search(vector=query, k=10, diverse=0.6)
    assert varied[0].id == plain[0].id  # the best one still leads
    assert len({group[h.id] for h in varied}) == 6
    assert len({h.id for h in varied}) == 10
    # with feedback too, and with dedupe
    marked = col.search(relevant=[0, 1], irrelevant=[60], k=10, diverse=0.6, dedupe=0.999)
    assert len({group[h.id] for h in marked}) >= 4


def test_count_is_exact_below_the_limit(concept: Concept) -> None:
    col, vectors = concept.col, concept.vectors
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    query = unit[5]
    cosines = unit @ query
    counted = col.count(vector=query.tolist(), min_score=0.8)
    truth = int((cosines >= 0.8).sum())
    assert counted.exact and counted.estimate == counted.low == counted.high == truth
    assert counted.total == counted.sampled == len(vectors)
    # id queries leave themselves out, as searches do; filters and exclusions apply
    assert col.count(id=5, min_score=0.8).estimate == truth - 1
    odd = [i for i in range(len(vectors)) if i % 2 and cosines[i] >= 0.8]
    counted = col.count(vector=query.tolist(), min_score=0.8, filter={"split": "odd"})
    assert counted.estimate == len(odd) and counted.total == len(vectors) // 2
    less = col.count(vector=query.tolist(), min_score=0.8, exclude_ids=odd[:3])
    assert less.estimate == truth - 3
    assert counted.to_dict()["exact"] is True


def test_count_samples_above_the_limit(concept: Concept) -> None:
    col, vectors = concept.col, concept.vectors
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = int((unit @ unit[5] >= 0.5).sum())
    counted = col.count(vector=unit[5].tolist(), min_score=0.5, exact_limit=100, sample_size=300)
    assert not counted.exact and counted.sampled == 300
    assert counted.low <= truth <= counted.high
    assert counted.low <= counted.estimate <= counted.high
    assert counted.high - counted.low < len(vectors) / 2


def test_count_with_feedback_and_bad_thresholds(concept: Concept) -> None:
    col, relevant, irrelevant = concept.col, concept.relevant, concept.irrelevant
    counted = col.count(relevant=relevant, irrelevant=irrelevant, min_score=0.5)
    assert counted.exact and 0 < counted.estimate < counted.total
    above = col.search(relevant=relevant, irrelevant=irrelevant, k=counted.estimate + 10)
    assert sum(h.score >= 0.5 for h in above) == counted.estimate
    for bad in (-1.5, 1.01, float("nan"), "0.3", None):
        with pytest.raises(InvalidQueryError, match="min_score"):
            col.count(id=1, min_score=bad)
    with pytest.raises(NotFoundError, match="99999"):
        col.count(relevant=[99999], min_score=0.1)


def test_cli_feedback_diverse_and_count(concept: Concept) -> None:
    marks = [a for i in concept.relevant for a in ("--relevant", str(i))]
    marks += [a for i in concept.irrelevant for a in ("--irrelevant", str(i))]
    done = runner.invoke(cli_app, ["search", str(concept.path), *marks, "-k", "30", "--json"])
    assert done.exit_code == 0, done.output
    ids = [h["id"] for h in json.loads(done.output)]
    assert ids == [h.id for h in concept.col.search(
        relevant=concept.relevant, irrelevant=concept.irrelevant, k=30
    )]  # fmt: skip
    done = runner.invoke(
        cli_app, ["search", str(concept.path), "--id", "3", "--diverse", "0.5", "--json"]
    )
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        cli_app, ["count", str(concept.path), "--id", "5", "--min-score", "0.8", "--json"]
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["estimate"] == concept.col.count(id=5, min_score=0.8).estimate
    done = runner.invoke(cli_app, ["count", str(concept.path), "--id", "5", "--min-score", "0.8"])
    assert "of 1199 images (exact)" in done.output  # id 5 itself left out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["count", "--id", "5", "--min-score", "3"], "min_score must be a number from -1 to 1"),
        (["search", "--relevant", "99999"], "marked ids not stored: 99999"),
        (["search", "--relevant", "1", "--irrelevant", "1"], "both relevant and irrelevant"),
        (["search", "--id", "1", "--diverse", "2"], "diverse must be"),
    ],
)
def test_cli_bad_input_is_one_line(
    concept: Concept, args: list[str], needle: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import sys

    from lookalike.cli import main

    monkeypatch.setattr(sys, "argv", ["lookalike", args[0], str(concept.path), *args[1:]])
    with pytest.raises(SystemExit) as ended:
        main()
    err = capsys.readouterr().err
    assert ended.value.code == 1 and needle in err and "Traceback" not in err


def test_http_feedback_diverse_and_count(concept: Concept) -> None:
    col, relevant, irrelevant = concept.col, concept.relevant, concept.irrelevant
    with TestClient(create_app({"c": col})) as http:
        body = {"relevant": relevant, "irrelevant": irrelevant, "k": 25, "diverse": 0.2}
        answer = http.post("/v1/collections/c/search", json=body)
        assert answer.status_code == 200, answer.text
        expected = col.search(relevant=relevant, irrelevant=irrelevant, k=25, diverse=0.2)
        assert [r["id"] for r in answer.json()["results"]] == [h.id for h in expected]
        answer = http.post("/v1/collections/c/count", json={"id": 5, "min_score": 0.8})
        assert answer.status_code == 200, answer.text
        counted = answer.json()
        assert counted["estimate"] == col.count(id=5, min_score=0.8).estimate
        assert counted["exact"] is True and counted["took_ms"] >= 0
        for bad, status, code in [
            ({"relevant": [99999]}, 404, "not_found"),
            ({"relevant": []}, 422, "invalid_body"),
            ({"relevant": [1], "irrelevant": [1]}, 422, "invalid_body"),
            ({"id": 1, "diverse": 1.5}, 422, "invalid_body"),
        ]:
            answer = http.post("/v1/collections/c/search", json=bad)
            assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), bad
        for bad in ({"id": 5}, {"id": 5, "min_score": 2}, {"id": 5, "min_score": "x"}):
            answer = http.post("/v1/collections/c/count", json=bad)
            assert answer.status_code == 422, (bad, answer.text)
            assert "min_score" in answer.json()["error"]["message"]
        spec = http.get("/openapi.json").json()
        assert "/v1/collections/{name}/count" in spec["paths"]
        count_body = spec["components"]["schemas"]["CountBody"]["properties"]
        assert {"min_score", "relevant", "irrelevant", "diverse"} <= set(count_body)


def test_client_feedback_and_count(concept: Concept) -> None:
    col, relevant, irrelevant = concept.col, concept.relevant, concept.irrelevant
    with serve_app(create_app({"c": col})) as base, Client(base) as client:
        remote = client.collection("c")
        hits = remote.search(relevant=relevant, irrelevant=irrelevant, k=15)
        expected = col.search(relevant=relevant, irrelevant=irrelevant, k=15)
        assert [h.id for h in hits] == [h.id for h in expected]
        counted = remote.count(relevant=relevant, irrelevant=irrelevant, min_score=0.5)
        assert counted == col.count(relevant=relevant, irrelevant=irrelevant, min_score=0.5)
        with pytest.raises(Exception, match="marked ids not stored: 99999"):
            remote.count(relevant=[99999], min_score=0.5)
