"""Ingest on a Ray cluster: read, hash and decode in Ray tasks, encode in an actor pool.

Three entry points:

- :func:`ray_ingest` adds a source to a collection the driver can write to: the items the
  collection already holds (same path, size and mtime) are left out before the Dataset is
  made, so a rerun after a failure starts where it stopped; the encoded rows come back to the
  driver and go through the same :class:`~lookalike.ingest.Committer` as a single-process
  ingest (dedupe, replaced files, removed images, bad input), committed batch by batch under
  the writer lock, so a server searching the collection interleaves with it.
- :func:`embed_to_parquet` writes the vectors as Parquet shards instead, for a cluster that
  cannot reach the collection's disk; :func:`import_parquet` then adds the shards to a
  collection through the same committer, refusing shards of another model.

Only the :class:`~lookalike.backends.Backend` protocol is used, so any backend works.
Ray is optional: ``pip install 'lookalike[ray]'``. On a cluster, every node needs lookalike
installed and the model weights at the same path; the source's files must be readable from
the nodes (a shared file system), or be URLs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .encoders import DEFAULT_MODEL, Encoder, load_encoder
from .errors import BadInputError, LookalikeError, ModelMismatchError
from .fetch import FetchPolicy
from .imaging import ImageLimits
from .ingest import Committer, IngestOptions, Progress
from .prepare import Failure, PreparedImage, prepare
from .sources import SourceItem, iter_source, source_roots
from .types import IngestReport

if TYPE_CHECKING:
    from .collection import Collection

log = logging.getLogger("lookalike")

RAY_MISSING = "the Ray ingest needs Ray: pip install 'lookalike[ray]'"
CHUNK = 200_000  # source items per Ray Dataset: bounds the driver's memory on huge sources
# columns of a shard written by embed_to_parquet (and read back by import_parquet)
SHARD_COLUMNS = (
    "seq",
    "locator",
    "content_hash",
    "width",
    "height",
    "bytes",
    "mtime",
    "vector",
    "metadata",
    "model",
    "root",
    "error",
)
_NO_PIXELS = np.empty(0, np.uint8)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the Ray part runs."""

    address: str | None = None  # None: RAY_ADDRESS, a running local Ray, or a new local one
    actors: int | None = None  # encoder actors [default: GPUs / gpus_per_actor, or 1]
    batch_size: int = 64  # images per encoder call
    gpus_per_actor: float | None = None  # [default: 1 when the cluster has GPUs, else 0]
    chunk: int = CHUNK

    def __post_init__(self) -> None:
        if self.actors is not None and self.actors < 1:
            raise BadInputError(f"Ray actors must be 1 or more (got {self.actors})")
        if self.batch_size < 1 or self.chunk < 1:
            raise BadInputError("the Ray batch size and chunk must be 1 or more")
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise BadInputError(f"GPUs per actor must be 0 or more (got {self.gpus_per_actor})")


@dataclass
class EmbedReport:
    """What :func:`embed_to_parquet` wrote."""

    rows: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (locator, reason)
    model: str = ""
    dim: int = 0
    out: str = ""


@dataclass(frozen=True)
class _Model:
    """What an encoder actor needs to load the model."""

    spec: str
    weights: str | None
    device: str | None
    runtime: str
    threads: int | None


# -- library entry points -------------------------------------------------------------------


def ray_ingest(
    collection: Collection,
    source: str | os.PathLike[str] | Iterable[SourceItem],
    *,
    ray: RayOptions | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> IngestReport:
    """Add the images of ``source`` (as :meth:`Collection.add` takes it) to ``collection``,
    reading, decoding and encoding them on Ray. ``options`` are those of ``add``
    (``strict``, ``include_removed``); the rows stored are those ``add`` would store."""
    ray_options = ray or RayOptions()
    items, roots = _items_and_roots(source)
    options = {"batch_size": ray_options.batch_size, **options}
    committer = Committer(collection.backend, collection._ingest_options(options), progress)
    model = _Model(
        collection.model,
        collection.weights,
        collection._device,
        collection._runtime,
        collection._threads,
    )
    size = collection.encoder.image_size
    if roots:
        with collection.backend.writing():
            collection.backend.add_roots(roots)
    with _connected(ray_options.address):
        for chunk in _chunks(_unread(items, committer), ray_options.chunk):
            for result, vector in _encoded(chunk, model, size, committer.options, ray_options):
                committer.take(result, vector)
    report = committer.finish()
    with collection.backend.writing():
        collection.backend.keep_up()
    return report


def embed_to_parquet(
    source: str | os.PathLike[str] | Iterable[SourceItem],
    out: str | os.PathLike[str],
    *,
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    ray: RayOptions | None = None,
    device: str | None = None,
    runtime: str = "auto",
    limits: ImageLimits | None = None,
    fetch_policy: FetchPolicy | None = None,
) -> EmbedReport:
    """Embed the images of ``source`` on Ray and write Parquet shards under ``out`` (a
    folder, or any URI ``pyarrow`` writes to), one row per item: locator, content hash,
    width, height, bytes, mtime, vector, metadata (JSON), model spec, the folder it was
    indexed from, and the reason it failed (or null). :func:`import_parquet` adds them."""
    ray_options = ray or RayOptions()
    weights_path = str(Path(weights).resolve()) if weights else None
    encoder = load_encoder(model, weights_path, "cpu", runtime)  # the spec, dim and input size
    spec = _Model(encoder.spec, weights_path, device, runtime, None)
    options = IngestOptions(
        limits=limits or ImageLimits(), fetch_policy=fetch_policy or FetchPolicy()
    )
    items, roots = _items_and_roots(source)
    report = EmbedReport(model=encoder.spec, dim=encoder.dim, out=os.fspath(out))
    extra = {"model": encoder.spec, "root": roots[0] if roots else None}
    with _connected(ray_options.address):
        seq = 0
        for chunk in _chunks(iter(items), ray_options.chunk):
            dataset = _encoded_dataset(chunk, seq, spec, encoder.image_size, options, ray_options)
            dataset = dataset.map_batches(
                _shard_rows, batch_format="numpy", fn_kwargs={"extra": extra, "dim": encoder.dim}
            )
            dataset.write_parquet(os.fspath(out))
            seq += len(chunk)
    report.rows = seq
    report.failed = _failures_written(out)
    return report


def import_parquet(
    collection: Collection,
    folder: str | os.PathLike[str],
    *,
    progress: Progress | None = None,
    **options: Any,
) -> IngestReport:
    """Add the shards :func:`embed_to_parquet` wrote under ``folder`` to ``collection``, with
    the same dedupe and bad-input handling as ``add``. Shards of another model spec or
    dimension are refused before anything is added. Needs no Ray."""
    import pyarrow.parquet as pq

    files = _shard_files(folder)
    for path in files:
        _check_shard(_open_shard(path), path, collection.model, collection.dim)
    committer = Committer(collection.backend, collection._ingest_options(options), progress)
    roots = set()
    for path in files:
        roots.update(_column_values(pq.ParquetFile(path), "root"))
    if roots - {None}:
        with collection.backend.writing():
            collection.backend.add_roots(sorted(roots - {None}))
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for result, vector in _shard_results(batch.to_pydict(), collection.dim):
                committer.take(result, vector)
    report = committer.finish()
    with collection.backend.writing():
        collection.backend.keep_up()
    return report


# -- the Ray pipeline -----------------------------------------------------------------------


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (a submodule `import ray` does not load)
    except ImportError as error:
        raise LookalikeError(RAY_MISSING) from error
    return ray


class _connected:
    """Joins a Ray cluster for the block (or uses the one this process joined already); a
    local Ray started here is shut down at the end."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self.started = False

    def __enter__(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, include_dashboard=False)
            self.started = True
        context = ray.data.DataContext.get_current()
        # rows come back in source order, so two copies of one image resolve as add() does
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False

    def __exit__(self, *_: object) -> None:
        if self.started:
            _ray().shutdown()


def _items_and_roots(
    source: str | os.PathLike[str] | Iterable[SourceItem],
) -> tuple[Iterable[SourceItem], list[str]]:
    if isinstance(source, (str, os.PathLike)):
        return iter_source(source), source_roots(source)
    return source, []


def _unread(items: Iterable[SourceItem], committer: Committer) -> Iterator[SourceItem]:
    """The items left to prepare: broken manifest rows are reported at once, and what the
    collection holds already (path, size and mtime unchanged) never enters the Dataset."""
    for item in items:
        if item.error:
            committer.take(Failure(item, item.error))
        elif not committer.skip_unread(item):
            yield item


def _chunks(items: Iterator[SourceItem], size: int) -> Iterator[list[SourceItem]]:
    chunk: list[SourceItem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encoded(
    chunk: list[SourceItem],
    model: _Model,
    size: int,
    options: IngestOptions,
    ray_options: RayOptions,
) -> Iterator[tuple[PreparedImage | Failure, np.ndarray | None]]:
    """Each item prepared and encoded on Ray, in source order."""
    dataset = _encoded_dataset(chunk, 0, model, size, options, ray_options)
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for i, data in enumerate(batch["item"]):
            item = _item(data)
            reason = str(batch["error"][i])
            if reason:
                yield Failure(item, reason), None
                continue
            prepared = PreparedImage(
                item,
                str(batch["content_hash"][i]),
                int(batch["width"][i]),
                int(batch["height"][i]),
                int(batch["bytes"][i]),
                _NO_PIXELS,
            )
            yield prepared, batch["vector"][i]


def _encoded_dataset(
    chunk: list[SourceItem],
    first: int,
    model: _Model,
    size: int,
    options: IngestOptions,
    ray_options: RayOptions,
) -> Any:
    ray = _ray()
    gpus = _gpus_per_actor(ray, ray_options)
    actors = ray_options.actors or _default_actors(ray, gpus)
    blocks = max(1, math.ceil(len(chunk) / ray_options.batch_size))
    dataset = ray.data.from_items(
        [{"seq": first + i, "item": pickle.dumps(item)} for i, item in enumerate(chunk)],
        override_num_blocks=blocks,
    )
    dataset = dataset.map_batches(
        _prepare_batch,
        batch_size=None,
        batch_format="numpy",
        fn_kwargs={"size": size, "limits": options.limits, "policy": options.fetch_policy},
        scheduling_strategy="SPREAD",  # decoding fans out over the cluster
    )
    return dataset.map_batches(
        _EncodeActor,
        batch_size=ray_options.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs={"model": model, "gpus": gpus},
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=gpus,
        num_cpus=1,
        # a strategy unlike the tasks' keeps Ray from fusing decoding into the encoder
        # actors, so the two overlap instead of taking turns
        scheduling_strategy="DEFAULT",
    )


def _gpus_per_actor(ray: Any, ray_options: RayOptions) -> float:
    if ray_options.gpus_per_actor is not None:
        return ray_options.gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def _default_actors(ray: Any, gpus: float) -> int:
    if gpus > 0:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
    return 1


def _prepare_batch(
    batch: dict[str, np.ndarray], size: int, limits: ImageLimits, policy: FetchPolicy
) -> dict[str, np.ndarray]:
    """A Ray task: read, hash, decode and resize a block of items (as a single-process
    ingest does in its worker processes)."""
    results = [prepare(_item(data), size, limits, policy) for data in batch["item"]]
    n = len(results)
    pixels = np.zeros((n, size, size, 3), np.uint8)
    columns: dict[str, list[Any]] = {
        "content_hash": [],
        "width": [],
        "height": [],
        "bytes": [],
        "error": [],
    }
    for i, result in enumerate(results):
        if isinstance(result, PreparedImage):
            pixels[i] = result.pixels
            values = (result.content_hash, result.width, result.height, result.bytes, "")
        else:
            values = ("", 0, 0, 0, result.reason)
        for key, value in zip(columns, values, strict=True):
            columns[key].append(value)
    return {
        "seq": batch["seq"],
        "item": batch["item"],
        **{key: np.asarray(values) for key, values in columns.items()},
        "pixels": pixels,
    }


def _item(data: bytes) -> SourceItem:
    # items travel pickled: Arrow has no type for them, and Ray warns when it falls back
    return pickle.loads(data)


class _EncodeActor:
    """A Ray actor holding one model: embeds the prepared pixels of each batch."""

    def __init__(self, model: _Model, gpus: float) -> None:
        device = "cuda" if gpus > 0 else model.device
        self.encoder: Encoder = load_encoder(
            model.spec, model.weights, device, model.runtime, model.threads
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.encoder.dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_images(batch["pixels"][ok])
        kept = {key: value for key, value in batch.items() if key != "pixels"}
        return {**kept, "vector": vectors}


# -- Parquet shards -------------------------------------------------------------------------


def _shard_rows(batch: dict[str, np.ndarray], extra: dict[str, Any], dim: int) -> Any:
    """Encoded rows as a plain Arrow table (a fixed-size list for the vector, JSON for the
    metadata), readable without Ray."""
    import pyarrow as pa

    items = [_item(data) for data in batch["item"]]
    errors = [str(e) or None for e in batch["error"]]
    vectors = np.asarray(batch["vector"], np.float32).reshape(-1)
    return pa.table(
        {
            "seq": pa.array(batch["seq"], pa.int64()),
            "locator": [item.locator for item in items],
            "content_hash": [str(h) for h in batch["content_hash"]],
            "width": pa.array(batch["width"], pa.int64()),
            "height": pa.array(batch["height"], pa.int64()),
            "bytes": pa.array(batch["bytes"], pa.int64()),
            "mtime": pa.array([item.mtime for item in items], pa.float64()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors, pa.float32()), dim),
            "metadata": [json.dumps(item.metadata, default=str) for item in items],
            "model": [extra["model"]] * len(items),
            "root": pa.array([extra["root"]] * len(items), pa.string()),
            "error": pa.array(errors, pa.string()),
        }
    )


def _shard_files(folder: str | os.PathLike[str]) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise BadInputError(f"{root} is not a folder of Parquet shards")
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise BadInputError(f"{root} holds no Parquet shards (*.parquet)")
    return sorted(files, key=_first_seq)  # source order, so duplicates resolve as add() does


def _open_shard(path: Path) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as error:
        raise BadInputError(f"{path} is not a readable Parquet file: {error}") from error


def _first_seq(path: Path) -> int:
    shard = _open_shard(path)
    if "seq" not in shard.schema_arrow.names:
        return 0  # not a shard of ours: _check_shard names it
    seq = shard.read(columns=["seq"]).column("seq")
    return int(seq[0].as_py()) if len(seq) else 0


def _check_shard(shard: Any, path: Path, model: str, dim: int) -> None:
    """Refuse a shard that is not one of embed_to_parquet's, or holds another model's vectors."""
    import pyarrow as pa

    schema = shard.schema_arrow
    missing = [c for c in SHARD_COLUMNS if c not in schema.names]
    if missing:
        raise BadInputError(f"{path} is not a lookalike shard: no column {', '.join(missing)}")
    specs = {spec for spec in _column_values(shard, "model") if spec is not None}
    if specs - {model}:
        raise ModelMismatchError(
            f"{path} holds vectors of {', '.join(sorted(specs))}; this collection uses {model}"
        )
    vector = schema.field("vector").type
    width = vector.list_size if pa.types.is_fixed_size_list(vector) else None
    if width != dim:
        raise ModelMismatchError(
            f"{path} holds {width}-d vectors; this collection holds {dim}-d ones"
        )


def _column_values(shard: Any, column: str) -> set[Any]:
    return set(shard.read(columns=[column]).column(column).unique().to_pylist())


def _shard_results(
    columns: dict[str, list[Any]], dim: int
) -> Iterator[tuple[PreparedImage | Failure, np.ndarray | None]]:
    """The rows of a shard as the committer takes them."""
    for i, locator in enumerate(columns["locator"]):
        try:
            metadata = json.loads(columns["metadata"][i] or "{}")
        except ValueError:
            metadata = {}
        size = columns["bytes"][i]
        item = SourceItem(locator, metadata, size or None, columns["mtime"][i])
        if columns["error"][i]:
            yield Failure(item, columns["error"][i]), None
            continue
        vector = np.asarray(columns["vector"][i], np.float32)
        norm = float(np.linalg.norm(vector)) if vector.shape == (dim,) else 0.0
        if not math.isfinite(norm) or norm == 0:
            yield Failure(item, "the shard's vector is not finite and non-zero"), None
            continue
        prepared = PreparedImage(
            item,
            columns["content_hash"][i],
            columns["width"][i],
            columns["height"][i],
            size,
            _NO_PIXELS,
        )
        yield prepared, vector / norm


def _failures_written(out: str | os.PathLike[str]) -> list[tuple[str, str]]:
    import pyarrow.parquet as pq

    table = pq.read_table(os.fspath(out), columns=["locator", "error"])
    return [
        (locator, error)
        for locator, error in zip(
            table.column("locator").to_pylist(), table.column("error").to_pylist(), strict=True
        )
        if error
    ]
