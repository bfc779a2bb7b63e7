"""FiftyOne: a lookalike collection as the similarity index of a dataset, and lookalike
exports as datasets.

Register the backend the way FiftyOne Brain documents (``~/.fiftyone/brain_config.json``)::

    {"similarity_backends": {"lookalike": {
        "config_cls": "lookalike.integrations.fiftyone.LookalikeSimilarityConfig"}}}

or with ``FIFTYONE_BRAIN_SIMILARITY_BACKENDS=*,lookalike`` and
``FIFTYONE_BRAIN_SIMILARITY_LOOKALIKE_CONFIG_CLS=lookalike.integrations.fiftyone.LookalikeSimilarityConfig``
(or call :func:`register`). Then, on a dataset whose samples carry their lookalike id in a
field (``lookalike_id``; :func:`load_export` makes such a dataset)::

    fob.compute_similarity(dataset, backend="lookalike", brain_key="lk", embeddings=False,
                           url="http://127.0.0.1:8000", collection="photos")
    dataset.sort_by_similarity("a police car at night", k=50, brain_key="lk")
    dataset.sort_by_similarity(sample.id, k=50, brain_key="lk", dist_field="dist")

lookalike embeds and stores the images itself (``lookalike index``): the index is read
through a lookalike server (``url`` + ``collection``, ``api_key`` or ``$LOOKALIKE_API_KEY``)
or a local collection folder (``collection`` as a path, ``url`` left out; needs
``lookalike[engine]``). Queries may be sample ids, vectors, or text prompts (searched by the
collection's own model). Distances are cosine distances, ``1 - score``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np
from bson import ObjectId
from fiftyone.brain.similarity import Similarity, SimilarityConfig, SimilarityIndex

BACKEND = "lookalike"
CONFIG_CLS = "lookalike.integrations.fiftyone.LookalikeSimilarityConfig"
MAX_K = 10_000


class LookalikeSimilarityConfig(SimilarityConfig):
    """Where the lookalike collection is, and which sample field holds each sample's id."""

    def __init__(
        self,
        url: str | None = None,
        collection: str | None = None,
        api_key: str | None = None,
        id_field: str = "lookalike_id",
        **kwargs: Any,
    ) -> None:
        kwargs.pop("embeddings_field", None)  # lookalike holds the embeddings
        super().__init__(**kwargs)
        self.url = url
        self.collection = collection
        self._api_key = api_key  # never saved with the run
        self.id_field = id_field

    @property
    def method(self) -> str:
        return BACKEND

    @property
    def max_k(self) -> int:
        return MAX_K

    @property
    def supports_least_similarity(self) -> bool:
        return False

    @property
    def supported_aggregations(self) -> tuple[str, ...]:
        return ("mean",)

    @property
    def api_key(self) -> str | None:
        return self._api_key or os.environ.get("LOOKALIKE_API_KEY")

    def load_credentials(self, api_key: str | None = None, **_: Any) -> None:
        self._api_key = api_key or self._api_key


class LookalikeSimilarity(Similarity):
    """The factory FiftyOne Brain builds from the config."""

    def ensure_requirements(self) -> None:
        if not self.config.collection:
            raise ValueError("give collection=: its name on the lookalike server, or its folder")

    def ensure_usage_requirements(self) -> None:
        self.ensure_requirements()

    def initialize(self, samples: Any, brain_key: str | None) -> LookalikeSimilarityIndex:
        return LookalikeSimilarityIndex(samples, self.config, brain_key, backend=self)


class LookalikeSimilarityIndex(SimilarityIndex):
    """A lookalike collection answering FiftyOne's similarity queries."""

    def __init__(self, samples: Any, config: Any, brain_key: Any, backend: Any = None) -> None:
        super().__init__(samples, config, brain_key, backend=backend)
        self._searcher: Any = None
        self._to_sample: dict[int, str] = {}
        self._to_lookalike: dict[str, int] = {}
        self._map_ids()

    def _map_ids(self) -> None:
        sample_ids, lookalike_ids = self.samples.values(["id", self.config.id_field])
        pairs = [
            (s, int(i)) for s, i in zip(sample_ids, lookalike_ids, strict=True) if i is not None
        ]
        self._to_lookalike = dict(pairs)
        self._to_sample = {i: s for s, i in pairs}

    def _search(self, **query: Any) -> list[Any]:
        """Hits of a lookalike search, through the server or the local collection."""
        if self._searcher is None:
            config = self.config
            if config.url:
                from ..client import Client

                client = Client(config.url, config.api_key)
                self._searcher = lambda **q: client.search(config.collection, **q)
            else:
                from ..collection import Collection

                self._searcher = Collection.open(config.collection).search
        return self._searcher(**query)

    @property
    def supports_prompts(self) -> bool:
        return True  # texts go to the collection's own model

    @property
    def is_external(self) -> bool:
        return True

    @property
    def total_index_size(self) -> int:
        return len(self._to_lookalike)

    def reload(self) -> None:
        super().reload()
        self._map_ids()

    def add_to_index(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(
            "lookalike embeds and stores images itself: add them with `lookalike index`, and "
            f"give each sample its id in the field {self.config.id_field!r}"
        )

    def remove_from_index(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError("remove images from the collection with `lookalike remove`")

    def get_embeddings(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("lookalike keeps its vectors: search them through this index")

    def cleanup(self) -> None:
        """Nothing to drop: the collection is not this index's to delete."""

    def _parse_query(self, query: Any) -> Any:
        if isinstance(query, str) and not ObjectId.is_valid(query):
            return [query]  # a prompt: searched as text by lookalike
        texts = isinstance(query, (list, tuple)) and query and isinstance(query[0], str)
        if texts and not all(ObjectId.is_valid(q) for q in query):
            return list(query)
        return super()._parse_query(query)

    def _kneighbors(
        self,
        query: Any = None,
        k: int | None = None,
        reverse: bool = False,
        aggregation: str | None = None,
        return_dists: bool = False,
    ) -> Any:
        if query is None:
            raise ValueError("lookalike answers queries, not all-pairs neighbors")
        if reverse:
            raise ValueError("lookalike does not sort by least similarity")
        if aggregation not in (None, "mean"):
            raise ValueError(f"unsupported aggregation {aggregation!r}; use 'mean'")
        queries = self._queries(query)
        if aggregation == "mean" and len(queries) > 1:
            queries = [_mean(queries)]
        k = min(k or self.total_index_size or 1, MAX_K)
        allowed = set(self.current_sample_ids)
        results = [self._neighbors(q, k, allowed) for q in queries]
        single = len(results) == 1
        ids: list[Any] = [[s for s, _ in r] for r in results]
        dists: list[Any] = [[d for _, d in r] for r in results]
        if single:
            ids, dists = ids[0], dists[0]
        return (ids, None, dists) if return_dists else (ids, None)

    def _queries(self, query: Any) -> list[dict[str, Any]]:
        """lookalike query arguments, one per FiftyOne query."""
        if isinstance(query, np.ndarray):
            rows = query.reshape(1, -1) if query.ndim == 1 else query
            return [{"vector": row.astype(np.float32).tolist()} for row in rows]
        out = []
        for q in query:
            if ObjectId.is_valid(q):
                if q not in self._to_lookalike:
                    raise ValueError(f"sample {q} has no {self.config.id_field!r}")
                out.append({"id": [self._to_lookalike[q]]})
            else:
                out.append({"text": q})
        return out

    def _neighbors(
        self, query: dict[str, Any], k: int, allowed: set[str]
    ) -> list[tuple[str, float]]:
        """(sample id, cosine distance) of the best hits that are samples of the view."""
        hits = self._search(k=k, **query)
        found = [(self._to_sample.get(h.id), 1.0 - float(h.score)) for h in hits]
        return [(s, d) for s, d in found if s is not None and s in allowed]

    @classmethod
    def _from_dict(cls, d: Any, samples: Any, config: Any, brain_key: Any) -> Any:
        return cls(samples, config, brain_key)


def _mean(queries: list[dict[str, Any]]) -> dict[str, Any]:
    """One query for several: ids as "more like these", else each part weighted equally."""
    if all(set(q) == {"id"} for q in queries):
        return {"id": [i for q in queries for i in q["id"]]}
    parts = []
    for q in queries:
        kind, value = next(iter(q.items()))
        values = value if kind == "id" else [value]
        parts += [{kind: v} for v in values]
    return {"query": parts}


def register() -> None:
    """Make ``backend="lookalike"`` known to FiftyOne Brain in this process."""
    fob.brain_config.similarity_backends.setdefault(BACKEND, {})["config_cls"] = CONFIG_CLS


def load_export(
    path: str | os.PathLike[str], name: str | None = None, *, persistent: bool = False
) -> Any:
    """A FiftyOne dataset of a lookalike ``json`` or ``jsonl`` export (or ``search --json``
    output): one sample per image, with fields ``lookalike_id``, ``lookalike_score`` and
    ``lookalike_rank`` (when given), the image's lookalike tags as the sample's tags, and
    its metadata keys as fields."""
    records = _records(Path(path))
    dataset = fo.Dataset(name, persistent=persistent)
    samples = []
    for record in records:
        filepath = record.get("path") or record.get("filepath") or record.get("url")
        if not filepath:
            raise ValueError(f"export record {record.get('id')} names no path or url")
        sample = fo.Sample(filepath=filepath, tags=list(record.get("tags") or []))
        sample["lookalike_id"] = int(record["id"])
        if record.get("score") is not None:
            sample["lookalike_score"] = float(record["score"])
        if record.get("rank") is not None:
            sample["lookalike_rank"] = int(record["rank"])
        for key, value in (record.get("metadata") or {}).items():
            if key.isidentifier() and key not in {"id", "filepath", "tags", "metadata"}:
                sample[key] = value
        samples.append(sample)
    dataset.add_samples(samples)
    return dataset


def _records(path: Path) -> Sequence[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    if isinstance(data, dict):  # {"results": [...]} as the API answers, or {"items": [...]}
        data = data.get("results") or data.get("items") or data.get("hits") or []
    if not isinstance(data, list):
        raise ValueError(f"{path} is not a lookalike export (a list of hits)")
    return data
