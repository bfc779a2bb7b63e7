"""Checking a collection on disk (rows vs vectors vs index vs files) and repairing what can be
repaired without losing rows or vectors."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .backends.embedded import EmbeddedBackend
from .errors import CollectionError
from .fetch import is_url
from .index import IvfIndex, has_ivf
from .manifest import read_manifest
from .recovery import diagnose_database, rebuild_database
from .store import DATABASE, Store, VectorShards, describe_ranges, id_ranges

NORM_TOLERANCE = 1e-3
SET_ASIDE = "set-aside"  # vectors no committed row accounts for, moved out of the shards


@dataclass
class Problem:
    """One thing found wrong, and whether it was repaired."""

    what: str
    repairable: bool
    repaired: bool = False
    ids: list[int] = field(default_factory=list)  # the rows concerned, where there are some


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


Repair = Callable[[], None]


def verify_path(path: str | os.PathLike[str], *, repair: bool = False) -> VerifyReport:
    """Check the collection at ``path``, its database first (which may be too damaged, or
    missing, for the collection to open); with ``repair``, fix what can be fixed."""
    root = Path(path)
    manifest = read_manifest(root)
    _require_embedded(root, manifest.get("backend", "embedded"))
    dim = int(manifest["dim"])
    report = VerifyReport()
    damage = diagnose_database(root, dim)
    if damage is not None:
        report.problems.append(Problem(damage.what, damage.repairable))
        if not (repair and damage.repairable):
            report.vectors = VectorShards(root / "vectors", dim).stored_count()
            return report
        rebuilt = rebuild_database(root, dim)
        report.problems[0] = Problem(f"{damage.what}; {rebuilt.what}", True, True, rebuilt.lost)
    collection = EmbeddedBackend(root, dim)
    try:
        inner = verify(collection, repair=repair, database_checked=True)
    finally:
        collection.close()
    report.rows, report.vectors = inner.rows, inner.vectors
    report.problems += inner.problems
    return report


def _require_embedded(root: Path, backend: str) -> None:
    """Refuse a collection whose rows and vectors live elsewhere, saying so."""
    if backend != "embedded":
        raise CollectionError(
            f"{root} keeps its rows and vectors in {backend}, which checks its own data: "
            "verify checks embedded collections"
        )


def verify(
    collection: EmbeddedBackend, *, repair: bool = False, database_checked: bool = False
) -> VerifyReport:
    """Check the rows, vectors, index and files of an embedded collection (its backend, as
    ``Collection.backend``); with ``repair``, fix what can be fixed."""
    _require_embedded(collection.path, collection.kind)
    store = collection.store
    report = VerifyReport()
    # check=False: the lock must neither truncate nor refuse what is about to be looked at
    with store.writing(check=False) if repair else nullcontext():
        view = store.view()
        report.vectors = view.count
        if not database_checked:
            _check_database(collection, report)
        _check_rows(collection, view.count, report)
        _check_stale(collection, report)
        repairs = [
            _check_gaps(store, view.count, report),
            _check_tail(collection, view.count, report),
            _check_keys(store, report),
        ]
        _check_vectors(collection, view.count, view.deleted, report)
        repairs.append(_check_index(collection, view.count, report))
        _check_files(collection, report)
        if repair:
            for problem, fix in (r for r in repairs if r is not None):
                fix()
                problem.repaired = True
    return report


def _check_database(collection: EmbeddedBackend, report: VerifyReport) -> None:
    answer = collection.store.integrity_check()
    if answer != "ok":
        report.problems.append(
            Problem(
                f"{DATABASE} integrity check failed: {answer}; `lookalike verify --repair` "
                "rebuilds it once nothing else has the collection open",
                False,
            )
        )


def _check_stale(collection: EmbeddedBackend, report: VerifyReport) -> None:
    rows = collection.store.stale_rows()
    if rows:
        ids = [r.id for r in rows]
        report.problems.append(
            Problem(
                f"{len(rows)} images wait to be embedded again after their vectors were lost "
                f"(ids {describe_ranges(id_ranges(ids))}): run "
                f"`lookalike index --collection {collection.path}`",
                False,
                ids=ids,
            )
        )


def _check_gaps(store: Store, count: int, report: VerifyReport) -> tuple[Problem, Repair] | None:
    gaps = store.vectors.missing(count)
    if not gaps:
        return None
    rows = store.rows([i for start, stop in gaps for i in range(start, stop)])
    live = sorted(i for i, row in rows.items() if not row.deleted and not row.stale)
    examples = ", ".join(rows[i].key for i in live[:3])
    problem = Problem(
        f"the vector files lack the vectors of {sum(b - a for a, b in gaps)} committed rows "
        f"(ids {describe_ranges(gaps)}), {len(live)} of them live images"
        f"{f' (e.g. {examples})' if examples else ''}; searches skip them: --repair marks them "
        "to be embedded again, which `lookalike index` then does",
        True,
        ids=live,
    )
    report.problems.append(problem)

    def fix() -> None:
        store.mark_stale(live)  # first: zeros must never pass for their vectors
        store.vectors.pad(count)

    return problem, fix


def _check_tail(
    collection: EmbeddedBackend, count: int, report: VerifyReport
) -> tuple[Problem, Repair] | None:
    store = collection.store
    past = store.vectors.stored_past(count)
    if not past:
        return None
    if past <= store.pending_count() - count:
        problem = Problem(
            f"{past} uncommitted vectors past the committed count (left by an interrupted write)",
            True,
        )
        report.problems.append(problem)
        return problem, lambda: store.vectors.truncate(count)
    if count == 0:
        report.problems.append(
            Problem(
                f"{DATABASE} records no rows but the vector files hold {past} vectors: it was "
                "replaced or emptied, and the rows of these vectors (paths, metadata) are lost. "
                f"Restore {DATABASE} from a backup, or index the sources again into a new "
                "collection",
                False,
            )
        )
        return None
    target = (
        collection.path / SET_ASIDE / f"vectors-from-{count}-{time.strftime('%Y%m%d-%H%M%S')}.f32"
    )
    problem = Problem(
        f"{past} vectors past the {count} committed rows, more than an interrupted write "
        f"leaves ({DATABASE} replaced or restored from an older copy?): --repair moves them "
        f"to {target.relative_to(collection.path)}",
        True,
    )
    report.problems.append(problem)

    def fix() -> None:
        target.parent.mkdir(exist_ok=True)
        store.vectors.set_aside(count, target)

    return problem, fix


def _check_keys(store: Store, report: VerifyReport) -> tuple[Problem, Repair] | None:
    duplicates = store.duplicate_keys()
    if not duplicates:
        return None
    extra = sorted(i for ids in duplicates.values() for i in ids[:-1])
    problem = Problem(
        f"{len(duplicates)} paths or URLs are stored more than once ({len(extra)} extra rows, "
        f"ids {describe_ranges(id_ranges(extra))}; e.g. {next(iter(duplicates))}): --repair "
        "keeps the latest row of each",
        True,
        ids=extra,
    )
    report.problems.append(problem)

    def fix() -> None:
        store.mark_deleted(extra)

    return problem, fix


def _check_rows(collection: EmbeddedBackend, count: int, report: VerifyReport) -> None:
    rows, lowest, highest = collection.store.id_range()
    report.rows = rows
    if rows != count or (rows and (lowest != 0 or highest != count - 1)):
        report.problems.append(
            Problem(
                f"rows and vectors disagree: {rows} rows with ids {lowest}..{highest}, "
                f"{count} committed vectors",
                False,
            )
        )


def _check_vectors(
    collection: EmbeddedBackend, count: int, deleted: np.ndarray, report: VerifyReport
) -> None:
    bad = 0
    for start, block in collection.store.vectors.chunks(count):
        norms = np.linalg.norm(block, axis=1)
        wrong = ~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE)
        bad += int((wrong & ~deleted[start : start + len(block)]).sum())
    if bad:
        report.problems.append(Problem(f"{bad} stored vectors are not finite unit vectors", False))


def _check_index(
    collection: EmbeddedBackend, count: int, report: VerifyReport
) -> tuple[Problem, Repair] | None:
    if not has_ivf(collection.path):
        return None
    try:
        index = IvfIndex(collection.path, collection.store.vectors)  # the files, not the cache
        indexed = index.params.indexed_count
        holds = int(index.base.ntotal)  # opening read the delta's seed too
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

    def fix() -> None:
        collection.rebuild_index("ivf")

    return problem, fix


def _check_files(collection: EmbeddedBackend, report: VerifyReport) -> None:
    missing = [
        row.key
        for row in collection.iter_live()
        if not is_url(row.key) and not os.path.exists(row.key)
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
