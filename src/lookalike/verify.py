"""Checking a collection on disk (rows vs vectors vs index vs files) and repairing what can be
repaired without losing rows."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .index import IvfIndex, has_ivf

if TYPE_CHECKING:
    from .collection import Collection

NORM_TOLERANCE = 1e-3


@dataclass
class Problem:
    """One thing found wrong, and whether it was repaired."""

    what: str
    repairable: bool
    repaired: bool = False


@dataclass
class VerifyReport:
    """Everything a verification found."""

    rows: int = 0
    vectors: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem is left unrepaired."""
        return all(p.repaired for p in self.problems)


def verify(collection: Collection, *, repair: bool = False) -> VerifyReport:
    """Check rows, vectors, index and files; with ``repair``, fix what can be fixed."""
    store = collection.backend.store
    report = VerifyReport()
    # taking the writer lock truncates an interrupted write's tail: look before it does
    tail = _check_shards(collection, store.view().count, report)
    with store.writing() if repair else nullcontext():
        view = store.view()
        report.vectors = view.count
        _check_database(collection, report)
        _check_rows(collection, view.count, report)
        _check_vectors(collection, view.count, view.deleted, report)
        stale_index = _check_index(collection, view.count, report)
        _check_files(collection, report)
        if repair:
            if tail:
                store.vectors.truncate(view.count)
                tail.repaired = True
            if stale_index:
                collection.rebuild_index("ivf")
                stale_index.repaired = True
    return report


def _check_database(collection: Collection, report: VerifyReport) -> None:
    answer = collection.backend.store.integrity_check()
    if answer != "ok":
        report.problems.append(Problem(f"rows.sqlite integrity check failed: {answer}", False))


def _check_rows(collection: Collection, count: int, report: VerifyReport) -> None:
    rows, lowest, highest = collection.backend.store.id_range()
    report.rows = rows
    if rows != count or (rows and (lowest != 0 or highest != count - 1)):
        report.problems.append(
            Problem(
                f"rows and vectors disagree: {rows} rows with ids {lowest}..{highest}, "
                f"{count} committed vectors",
                False,
            )
        )


def _check_shards(collection: Collection, count: int, report: VerifyReport) -> Problem | None:
    stored = collection.backend.store.vectors.stored_count()
    if stored < count:
        report.problems.append(
            Problem(
                f"vector files hold {stored} vectors but {count} rows are committed: re-index the "
                "missing images",
                False,
            )
        )
    elif stored > count:
        problem = Problem(
            f"{stored - count} uncommitted vectors past the committed count "
            "(left by an interrupted write)",
            True,
        )
        report.problems.append(problem)
        return problem
    return None


def _check_vectors(
    collection: Collection, count: int, deleted: np.ndarray, report: VerifyReport
) -> None:
    if collection.backend.store.vectors.stored_count() < count:
        return
    bad = 0
    for start, block in collection.backend.store.vectors.chunks(count):
        norms = np.linalg.norm(block, axis=1)
        wrong = ~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE)
        bad += int((wrong & ~deleted[start : start + len(block)]).sum())
    if bad:
        report.problems.append(Problem(f"{bad} stored vectors are not finite unit vectors", False))


def _check_index(collection: Collection, count: int, report: VerifyReport) -> Problem | None:
    if not has_ivf(collection.path):
        return None
    try:
        index = IvfIndex(
            collection.path, collection.backend.store.vectors
        )  # the files, not the cache
        indexed = index.params.indexed_count
        holds = int(index.base.ntotal)  # type: ignore[attr-defined]
    except Exception as error:  # a damaged index file fails in many ways inside Faiss
        problem = Problem(f"the IVF index cannot be read ({error}): rebuild it", True)
    else:
        if holds == indexed and indexed <= count:
            return None
        problem = Problem(
            f"the IVF index holds {holds} vectors, its parameters say {indexed}, "
            f"the collection {count}: rebuild it",
            True,
        )
    report.problems.append(problem)
    return problem


def _check_files(collection: Collection, report: VerifyReport) -> None:
    missing = [
        item.path
        for item in collection.items()
        if item.path is not None and not os.path.exists(item.path)
    ]
    if missing:
        examples = ", ".join(str(p) for p in missing[:3])
        report.problems.append(
            Problem(
                f"{len(missing)} indexed files no longer exist (e.g. {examples}); their rows are "
                "kept: remove them with `lookalike remove` if they are gone for good",
                False,
            )
        )
