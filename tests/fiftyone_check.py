"""Run by tests/test_fiftyone.py with FiftyOne's own venv: a lookalike export becomes a
dataset, and the lookalike backend answers compute_similarity / sort_by_similarity.

    .venv-fiftyone/bin/python tests/fiftyone_check.py SERVER_URL COLLECTION EXPORT.json
"""

from __future__ import annotations

import json
import sys

import fiftyone as fo
import fiftyone.brain as fob
import numpy as np

from lookalike.integrations.fiftyone import load_export


def main(url: str, collection: str, export: str) -> None:
    dataset = load_export(export, "lookalike-export")
    out: dict = {
        "count": len(dataset),
        "fields": sorted(dataset.get_field_schema()),
        "tags": dataset.count_sample_tags(),
        "scores": dataset.values("lookalike_score"),
    }
    fob.compute_similarity(
        dataset, backend="lookalike", brain_key="lk", embeddings=False, url=url,
        collection=collection,
    )  # fmt: skip
    first = dataset.first()
    view = dataset.sort_by_similarity(first.id, k=4, brain_key="lk", dist_field="dist")
    out["query_id"] = first.lookalike_id
    out["by_id"] = [[s.lookalike_id, s.dist] for s in view]
    out["by_text"] = dataset.sort_by_similarity("a red circle", k=3, brain_key="lk").values(
        "lookalike_id"
    )
    vector = np.asarray(out.pop("vector", None) or json.loads(sys.stdin.read()), np.float32)
    out["by_vector"] = dataset.sort_by_similarity(vector, k=3, brain_key="lk").values(
        "lookalike_id"
    )
    # a view limits the answers to its samples
    half = dataset.match(fo.ViewField("lookalike_id") % 2 == 0)
    index = dataset.load_brain_results("lk")  # rebuilt from the stored run, as a new session
    index.use_view(half)
    out["in_view"] = half.select(index._kneighbors(query=[first.id], k=8)[0]).values("lookalike_id")
    out["loaded_size"] = index.total_index_size
    try:
        index.add_to_index(np.zeros((1, 4)), [first.id])
    except ValueError as error:
        out["add_refused"] = str(error)
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
