"""Index kinds: exact and trained IVF, filtered search, adds after training, rebuild, reopen."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import BadInputError, Collection, ModelMismatchError, UnsupportedQueryError

DIM = 64
N = 6000


CENTERS = np.random.default_rng(0).standard_normal((60, DIM)).astype(np.float32)


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Draws from one fixed mixture of Gaussians; another seed gives other (held-out) draws."""
    rng = np.random.default_rng(seed)
    points = CENTERS[rng.integers(0, 60, n)] + 0.4 * rng.standard_normal((n, DIM))
    return points.astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(N)


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> Path:
    path = tmp_path_factory.mktemp("trained") / "col"
    with Collection.create(path, f"vectors:{DIM}") as collection:
        collection.add_vectors(
            vectors,
            [f"v{i}" for i in range(N)],
            metadata=[{"group": i % 50, "even": i % 2 == 0} for i in range(N)],
        )
        assert collection.rebuild_index("ivf", nlist=32) == "ivf"
    return path


@pytest.fixture
def trained(trained_once: Path, tmp_path: Path) -> Collection:
    """A private copy of one trained collection."""
    shutil.copytree(trained_once, tmp_path / "col")
    return Collection.open(tmp_path / "col")


def exact_ids(vectors: np.ndarray, query: np.ndarray, k: int, allowed=None) -> list[int]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    if allowed is not None:
        scores[~allowed] = -np.inf
    return [int(i) for i in np.argsort(-scores)[:k] if np.isfinite(scores[i])]


def test_small_collections_search_exactly(tmp_path: Path, vectors: np.ndarray) -> None:
    collection = Collection.create(tmp_path / "col", f"vectors:{DIM}")
    collection.add_vectors(vectors[:500], [f"v{i}" for i in range(500)])
    assert collection.stats().index == "flat"
    hits = collection.search(vector=vectors[7], k=10)
    assert [h.id for h in hits] == exact_ids(vectors[:500], vectors[7], 10)
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


def test_ivf_recall_is_tuned_and_stored(trained: Collection, vectors: np.ndarray) -> None:
    params = trained.backend.index.params  # type: ignore[attr-defined]
    assert params.recall_at_20 >= 0.9
    assert params.indexed_count == N
    queries = clustered(40, seed=9)
    found = [set(h.id for h in trained.search(vector=q, k=20)) for q in queries]
    truth = [set(exact_ids(vectors, q, 20)) for q in queries]
    recall = np.mean([len(f & t) / 20 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9
    assert trained.search(vector=vectors[123], k=1)[0].id == 123


def test_filters_run_inside_the_search(trained: Collection, vectors: np.ndarray) -> None:
    # 120 rows match: a post-filter over the top candidates would come back short
    hits = trained.search(vector=vectors[0], k=50, filter={"group": 7})
    assert len(hits) == 50
    assert all(h.metadata["group"] == 7 for h in hits)
    allowed = np.array([i % 50 == 7 for i in range(N)])
    assert [h.id for h in hits] == exact_ids(vectors, vectors[0], 50, allowed)
    # a broad filter goes through the IVF selector and still fills k
    broad = trained.search(vector=vectors[0], k=200, filter={"even": True})
    assert len(broad) == 200 and all(h.id % 2 == 0 for h in broad)
    assert trained.search(vector=vectors[0], k=5, filter={"group": 999}) == []


def test_adds_after_training_are_found_without_rebuild(trained: Collection) -> None:
    fresh = clustered(30, seed=5)
    ids = trained.add_vectors(fresh, [f"new{i}" for i in range(30)])
    assert trained.stats().index == "ivf"
    for i in (0, 17, 29):
        assert trained.search(vector=fresh[i], k=1)[0].id == ids[i]
    assert trained.backend.index.pending == 30  # type: ignore[attr-defined]


def test_removed_rows_never_return(trained: Collection, vectors: np.ndarray) -> None:
    first = trained.search(vector=vectors[42], k=5)
    assert first[0].id == 42
    trained.remove(ids=[42, first[1].id])
    again = trained.search(vector=vectors[42], k=5)
    assert {42, first[1].id}.isdisjoint(h.id for h in again)


def test_reopen_loads_the_saved_index(trained: Collection, vectors: np.ndarray) -> None:
    before = [(h.id, round(h.score, 5)) for h in trained.search(vector=vectors[3], k=10)]
    trained.close()
    reopened = Collection.open(trained.path)
    assert reopened.stats().index == "ivf"
    assert [(h.id, round(h.score, 5)) for h in reopened.search(vector=vectors[3], k=10)] == before


def test_delta_is_persisted_and_rebuild_retrains(trained: Collection) -> None:
    fresh = clustered(50, seed=6)
    ids = trained.add_vectors(fresh, [f"d{i}" for i in range(50)])
    trained.backend.index.save()  # type: ignore[attr-defined]
    assert trained.backend.index.params.indexed_count == N + 50  # type: ignore[attr-defined]
    trained.close()
    reopened = Collection.open(trained.path)
    assert reopened.backend.index.pending == 0  # type: ignore[attr-defined]
    assert reopened.search(vector=fresh[10], k=1)[0].id == ids[10]
    assert reopened.rebuild_index("ivf", nlist=64) == "ivf"
    assert reopened.backend.index.params.nlist == 64  # type: ignore[attr-defined]
    assert reopened.rebuild_index("flat") == "flat"
    assert reopened.search(vector=fresh[10], k=1)[0].id == ids[10]


def test_vectors_only_collections_refuse_models_and_bad_vectors(tmp_path: Path) -> None:
    collection = Collection.create(tmp_path / "col", f"vectors:{DIM}")
    with pytest.raises(ModelMismatchError):
        collection.add_vectors(np.ones((2, DIM + 1)), ["a", "b"])
    collection.add_vectors(np.ones((1, DIM)), ["a"])
    with pytest.raises(UnsupportedQueryError, match="no model"):
        collection.search(text="a cat")
    with pytest.raises(ModelMismatchError):
        collection.search(vector=[1.0] * (DIM - 1))


@pytest.mark.parametrize(("budget", "codec"), [(N * DIM, "SQ8"), (0, f"PQ{DIM // 4}np")])
def test_past_the_memory_budget_candidates_are_ranked_by_compact_codes(
    tmp_path: Path, vectors: np.ndarray, budget: int, codec: str
) -> None:
    collection = Collection.create(tmp_path / "col", f"vectors:{DIM}")
    collection.add_vectors(
        vectors, [f"v{i}" for i in range(N)], metadata=[{"group": i % 50} for i in range(N)]
    )
    collection.rebuild_index("ivf", nlist=32, memory_budget=budget)
    params = collection.backend.index.params  # type: ignore[attr-defined]
    assert params.rerank_codec == codec and params.recall_at_20 >= 0.9
    codes_file = tmp_path / "col" / "index" / f"{params.codes}.codes"
    assert codes_file.stat().st_size == N * collection.backend.index.codes.code_size  # type: ignore[attr-defined]
    queries = clustered(30, seed=11)
    found = [collection.search(vector=q, k=20) for q in queries]
    truth = [set(exact_ids(vectors, q, 20)) for q in queries]
    recall = np.mean([len({h.id for h in f} & t) / 20 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    tolerance = 1e-5 if params.exact_per_result else 2e-2  # exact, or decoded from the codes
    for hit in found[0]:
        assert hit.score == pytest.approx(
            float(unit[hit.id] @ queries[0]) / np.linalg.norm(queries[0]), abs=tolerance
        )
    # a selective filter scores every match, still returning k
    allowed = np.array([i % 50 == 3 for i in range(N)])
    filtered = collection.search(vector=vectors[3], k=30, filter={"group": 3})
    assert len(filtered) == 30 and filtered[0].id == 3
    assert len({h.id for h in filtered} & set(exact_ids(vectors, vectors[3], 30, allowed))) >= 27
    # adds are re-ranked exactly from the delta, then encoded when the delta is saved
    fresh = clustered(40, seed=12)
    ids = collection.add_vectors(fresh, [f"new{i}" for i in range(40)])
    assert collection.search(vector=fresh[5], k=1)[0].id == ids[5]
    collection.backend.index.save()  # type: ignore[attr-defined]
    assert codes_file.stat().st_size == (N + 40) * collection.backend.index.codes.code_size  # type: ignore[attr-defined]
    collection.close()
    reopened = Collection.open(tmp_path / "col")
    assert reopened.backend.index.codes.rows == N + 40  # type: ignore[attr-defined]
    assert reopened.search(vector=fresh[5], k=1)[0].id == ids[5]
    assert [h.id for h in reopened.search(vector=queries[0], k=20)] == [h.id for h in found[0]]
    # a rebuild within the budget drops the codes
    assert reopened.rebuild_index("ivf", nlist=32) == "ivf"
    assert not list((tmp_path / "col" / "index").glob("rerank-*"))


def test_a_damaged_codes_file_is_found_and_rebuilt(tmp_path: Path, vectors: np.ndarray) -> None:
    collection = Collection.create(tmp_path / "col", f"vectors:{DIM}")
    collection.add_vectors(vectors[:2000], [f"v{i}" for i in range(2000)])
    collection.rebuild_index("ivf", nlist=16, memory_budget=0)
    codes_file = next((tmp_path / "col" / "index").glob("rerank-*.codes"))
    data = codes_file.read_bytes()
    codes_file.unlink()  # a new inode: the open collection's memory map stays intact
    codes_file.write_bytes(data[: len(data) // 2])
    assert any("IVF index" in p.what for p in collection.verify().problems)
    fallback = Collection.open(tmp_path / "col")  # opens, and searches exactly meanwhile
    assert fallback.stats().index == "flat"
    assert fallback.search(vector=vectors[9], k=1)[0].id == 9
    collection.verify(repair=True)
    assert not any("IVF index" in p.what for p in collection.verify().problems)
    assert Collection.open(tmp_path / "col").search(vector=vectors[9], k=1)[0].id == 9


def test_the_delta_seed_is_read_at_the_first_add_and_checked_by_verify(
    trained: Collection, vectors: np.ndarray
) -> None:
    index = trained.backend.index
    assert index.delta is None  # type: ignore[attr-defined]  # a searching server never needs it
    assert trained.search(vector=vectors[5], k=1)[0].id == 5
    seed = trained.path / "index" / "ivf-trained.faiss"
    seed.write_bytes(seed.read_bytes()[:100])  # damaged before anything was added
    problems = [p.what for p in trained.verify().problems]
    assert any("IVF index cannot be read" in what for what in problems)
    trained.verify(repair=True)
    assert not any("IVF index" in p.what for p in trained.verify().problems)
    ids = trained.add_vectors(clustered(3, seed=21), ["late0", "late1", "late2"])
    assert trained.backend.index.delta is not None  # type: ignore[attr-defined]
    assert trained.search(vector=clustered(3, seed=21)[1], k=1)[0].id == ids[1]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_opening_maps_the_vectors_a_rerank_reads(trained_once: Path) -> None:
    def mapped_file_kib() -> int:
        return int(
            re.search(r"RssFile:\s+(\d+)", Path("/proc/self/status").read_text(encoding="utf-8"))[1]
        )

    before = mapped_file_kib()
    with Collection.open(trained_once) as collection:
        collection.backend.index.populating.join(timeout=30)  # type: ignore[attr-defined]
        assert mapped_file_kib() - before >= N * DIM * 4 // 1024 * 0.9  # every vector's page


def test_a_handle_keeps_searching_when_another_drops_the_index(
    trained: Collection, vectors: np.ndarray
) -> None:
    assert trained.search(vector=vectors[4], k=1)[0].id == 4  # its IVF index is open
    other = Collection.open(trained.path)  # another process, say: drops the index, then adds
    other.rebuild_index("flat")
    late = clustered(3, seed=22)
    ids = other.add_vectors(late, ["late0", "late1", "late2"])
    assert trained.search(vector=late[2], k=1)[0].id == ids[2]  # the delta seed was kept open
    other.close()


def test_many_tuning_queries_are_sampled(trained: Collection) -> None:
    queries = clustered(5000, seed=23)  # scored against every vector: sampled to 2,000
    assert 0.9 <= trained.tune_index(queries, target_recall=0.95) <= 1.0


def test_rows_straddling_pages_are_read_whole_when_prefetched(tmp_path: Path) -> None:
    dim = 100  # 400-byte rows: some cross a 4 KiB page boundary
    points = np.random.default_rng(3).standard_normal((3000, dim)).astype(np.float32)
    collection = Collection.create(tmp_path / "col", f"vectors:{dim}")
    collection.add_vectors(points, [f"v{i}" for i in range(3000)])
    collection.rebuild_index("ivf", nlist=16, memory_budget=0)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    for i in (0, 10, 81, 2999):  # row 10 spans bytes 4000-4399
        hit = collection.search(vector=points[i], k=1)[0]
        assert hit.id == i and hit.score == pytest.approx(1.0, abs=1e-5)
    assert np.allclose(collection.vectors([10, 81]), unit[[10, 81]], atol=1e-6)


def _recall(collection: Collection, vectors: np.ndarray, queries: np.ndarray) -> float:
    found = [{h.id for h in collection.search(vector=q, k=20)} for q in queries]
    truth = [set(exact_ids(vectors, q, 20)) for q in queries]
    return float(np.mean([len(f & t) / 20 for f, t in zip(found, truth, strict=True)]))


def test_tuned_recall_is_what_new_queries_get(trained: Collection, vectors: np.ndarray) -> None:
    # the tuner searches stored vectors as new ones (each left out of its own answers), so the
    # recall it records is the recall of held-out queries, not an optimistic figure
    params = trained.backend.index.params  # type: ignore[attr-defined]
    held_out = _recall(trained, vectors, clustered(300, seed=11))
    assert params.recall_at_20 >= params.target_recall
    assert held_out >= params.target_recall - 0.02
    assert abs(params.recall_at_20 - held_out) <= 0.02


def test_tune_index_retunes_without_retraining(trained: Collection, vectors: np.ndarray) -> None:
    index_file = trained.backend.index.params.file  # type: ignore[attr-defined]
    queries = clustered(150, seed=12)
    low = trained.tune_index(queries, target_recall=0.5)
    low_params = trained.backend.index.params  # type: ignore[attr-defined]
    assert low >= 0.5 and low_params.target_recall == 0.5
    high = trained.tune_index(queries, target_recall=0.99)
    high_params = trained.backend.index.params  # type: ignore[attr-defined]
    assert high >= 0.99
    assert (high_params.nprobe, high_params.rerank) > (low_params.nprobe, low_params.rerank)
    assert high_params.file == index_file  # the same trained index, only searched wider
    assert _recall(trained, vectors, queries) >= 0.98
    path = trained.path
    trained.close()
    with Collection.open(path) as reopened:  # the settings are saved with the index
        assert reopened.backend.index.params.nprobe == high_params.nprobe  # type: ignore[attr-defined]


def test_tune_index_takes_adds_since_the_index_file(trained: Collection) -> None:
    fresh = clustered(40, seed=13)
    ids = trained.add_vectors(fresh, [f"late{i}" for i in range(40)])
    assert trained.backend.index.pending == 40  # type: ignore[attr-defined]
    trained.tune_index(target_recall=0.9)
    assert trained.backend.index.pending == 0  # type: ignore[attr-defined]
    assert trained.search(vector=fresh[3], k=1)[0].id == ids[3]


def test_tune_index_refuses_what_it_cannot_tune(
    trained: Collection, tmp_path: Path, vectors: np.ndarray
) -> None:
    with pytest.raises(BadInputError, match="non-empty"):
        trained.tune_index(np.zeros((3, DIM + 1), dtype=np.float32))
    with pytest.raises(BadInputError, match="finite, non-zero"):
        trained.tune_index(np.zeros((3, DIM), dtype=np.float32))
    with pytest.raises(BadInputError, match="target_recall"):
        trained.tune_index(target_recall=1.5)
    with pytest.raises(UnsupportedQueryError):
        trained.tune_index(texts=["a police car"])  # vectors-only: no text encoder
    small = Collection.create(tmp_path / "small", f"vectors:{DIM}")
    small.add_vectors(vectors[:300], [f"v{i}" for i in range(300)])
    with pytest.raises(BadInputError, match="searched exactly"):
        small.tune_index()


def test_tuning_on_text_queries(tiny_clip, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    spec, weights = tiny_clip
    path = tmp_path / "clip"
    texts = ["a police car", "a red bicycle", "two dogs on a beach", "a cracked weld"]
    with Collection.create(path, spec, weights=weights) as collection:
        stored = np.random.default_rng(3).standard_normal((600, 32)).astype(np.float32)
        collection.add_vectors(stored, [f"v{i}" for i in range(600)])
        collection.rebuild_index("ivf", nlist=16, tune_texts=texts, target_recall=0.9)
        assert collection.backend.index.params.recall_at_20 >= 0.9  # type: ignore[attr-defined]
        assert collection.tune_index(texts=texts, target_recall=1.0) == 1.0
        with pytest.raises(BadInputError, match="not both"):
            collection.tune_index(stored[:2], texts=texts)
    runner = CliRunner()
    queries = tmp_path / "queries.txt"
    queries.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    result = runner.invoke(app, ["tune", str(path), "--texts", str(queries), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["recall_at_20"] >= 0.95
    result = runner.invoke(app, ["tune", str(path), "--target-recall", "0.8"])
    assert result.exit_code == 0 and "on the tuning queries (target 0.8)" in result.output
    queries.write_text("\n \n", encoding="utf-8")
    result = runner.invoke(app, ["tune", str(path), "--texts", str(queries)])
    assert result.exit_code == 2 and "holds no text queries" in result.output
