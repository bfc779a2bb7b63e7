"""The ``lookalike`` command: a thin face over :class:`lookalike.Collection`."""

from __future__ import annotations

import codecs
import contextlib
import errno
import io
import json
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_query import query_options
from .errors import BadInputError, LookalikeError
from .query import Query

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find the images of a collection that look like a query.",
)


class _Console(Console):
    """Rich's console, whose JSON escapes what stdout's encoding cannot hold: under an ASCII
    locale the escapes of ``_print_anything`` (``\\xe9``) would not be JSON."""

    def print_json(self, json: str | None = None, *, data: Any = None, **options: Any) -> None:
        options.setdefault("ensure_ascii", not _is_utf8(sys.stdout))
        super().print_json(json, data=data, **options)


def _is_utf8(stream: Any) -> bool:
    return codecs.lookup(getattr(stream, "encoding", None) or "ascii").name == "utf-8"


out = _Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

CollectionArg = Annotated[Path, typer.Argument(help="Collection directory.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON output.")]
AllowPrivate = Annotated[
    bool, typer.Option("--allow-private-urls", help="Let URLs reach loopback and private networks.")
]
RuntimeOpt = Annotated[
    str,
    typer.Option(
        help="Model engine: auto (checked int8, OpenVINO or ONNX Runtime on CPU, torch on GPU), "
        "torch, onnx, openvino, onnx-int8, int8."
    ),
]
ThreadsOpt = Annotated[
    int | None, typer.Option(help="CPU threads of the model [default: physical cores].")
]


RayOpt = Annotated[
    bool, typer.Option("--ray", help="Read, decode and encode on Ray (needs the `ray` extra).")
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(help="Ray cluster to join (default: RAY_ADDRESS, or a local Ray)."),
]
RayActorsOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Encoder actors, one model each (default: GPUs, or 1)."),
]
RayBatchOpt = Annotated[int, typer.Option(min=1, help="Images per encoder call on Ray.")]
RayGpusOpt = Annotated[
    float | None,
    typer.Option(min=0, help="GPUs per encoder actor (default: 1 where the cluster has GPUs)."),
]


def _ray_options(
    address: str | None, actors: int | None, batch_size: int, gpus: float | None
) -> Any:
    from .distributed import RayOptions

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per Dataset run
    return RayOptions(address, actors, batch_size, gpus)


def _ray_add(
    col: Any, address: str | None, actors: int | None, batch_size: int, gpus: float | None
) -> Any:
    """``col.add`` as run on Ray."""
    from .distributed import ray_ingest

    ray = _ray_options(address, actors, batch_size, gpus)

    def add(source: str, **options: Any) -> Any:
        options.pop("workers", None)  # decoding runs in Ray tasks
        options.pop("batch_size", None)
        return ray_ingest(col, source, ray=ray, **options)

    return add


ServerOpt = Annotated[
    str | None,
    typer.Option(
        help="Ask a lookalike server at this URL; COLLECTION is then its collection name."
    ),
]
ApiKeyOpt = Annotated[
    str | None, typer.Option(envvar="LOOKALIKE_API_KEY", help="API key for --server.")
]


def _open(path: Path, allow_private: bool = False, runtime: str = "auto") -> Any:
    from .collection import Collection
    from .fetch import FetchPolicy

    _require_collection(path)
    return Collection.open(
        path, fetch_policy=FetchPolicy(allow_private=allow_private), runtime=runtime
    )


def _require_collection(path: Path) -> None:
    """Refuse a folder that holds no collection, naming the command that makes one."""
    from .errors import CollectionError
    from .layout import MANIFEST

    if not (path / MANIFEST).is_file():
        raise CollectionError(
            f"{path} is not a lookalike collection (no {MANIFEST}); make one with "
            f"`lookalike index SOURCES -c {path}`"
        )


@app.command()
def index(
    collection: Annotated[
        Path, typer.Option("--collection", "-c", help="Collection directory (made on first use).")
    ],
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Folders, list files (.txt), CSV/Parquet manifests, image files or URLs."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model spec for a new collection [default: open_clip:ViT-B-32/laion2b_s34b_b79k]"
        ),
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the model.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Decoding processes beside the encoder [default: 0 (threads of this process"
            " take turns with a CPU encoder); beside a GPU encoder, cores - 1, at most 8]."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per encoder batch.")] = 64,
    strict: Annotated[bool, typer.Option(help="Stop at the first bad image.")] = False,
    include_removed: Annotated[
        bool,
        typer.Option(help="Add again images removed with `lookalike remove` (skipped otherwise)."),
    ] = False,
    allow_private_urls: AllowPrivate = False,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    runtime: RuntimeOpt = "auto",
    threads: ThreadsOpt = None,
    rebuild: Annotated[
        bool,
        typer.Option(
            help="Retrain the vector index afterwards (kind chosen from the collection's size)."
        ),
    ] = False,
    ray: RayOpt = False,
    ray_address: RayAddressOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_batch_size: RayBatchOpt = 64,
    ray_gpus_per_actor: RayGpusOpt = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Where a new collection keeps rows, vectors and index: embedded (in its "
            "folder) or milvus (a Milvus server at --uri) [default: embedded]."
        ),
    ] = None,
    uri: Annotated[
        str | None, typer.Option(help="The server of --backend milvus, e.g. http://HOST:19530.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add the images of SOURCES to a collection; images already there are skipped. Images
    whose vectors were lost (marked by `verify --repair`) are embedded again first. With
    --ray, reading, decoding and encoding run on a Ray cluster (docs/scale.md)."""
    sources = sources or []
    from .collection import Collection
    from .layout import MANIFEST

    if not sources and not rebuild and not (collection / MANIFEST).exists():
        raise BadInputError("give SOURCES to index, or --rebuild")
    from .encoders import DEFAULT_MODEL
    from .fetch import FetchPolicy

    total = _count_items(sources)  # a missing source fails here, before the model loads
    created = not collection.exists()
    try:
        with _loading(f"loading the model of {collection}", quiet=as_json):
            col = Collection.create(
                collection,
                model or _recorded_model(collection) or DEFAULT_MODEL,
                weights=weights,
                exist_ok=True,
                device=device,
                backend=backend,
                uri=uri,
                fetch_policy=FetchPolicy(allow_private=allow_private_urls),
                runtime=runtime,
                threads=threads,
            )
            _ = col.encoder  # an existing collection loads its model here, under the notice
        with col, progress_bar(total, quiet=as_json) as progress:
            options: dict[str, Any] = {
                "batch_size": batch_size,
                "strict": strict,
                "include_removed": include_removed,
            }
            if workers is not None:
                options["workers"] = workers
            reports = [col.reembed(**options)]  # images whose vectors were lost, first
            add = col.add
            if ray:
                add = _ray_add(col, ray_address, ray_actors, ray_batch_size, ray_gpus_per_actor)
            for source in sources:
                report = add(source, progress=progress, **options)
                reports.append(report)
                progress.finish_source(report)
            kind = col.rebuild_index() if rebuild else col.stats().index
    except BaseException:
        if created:
            _discard_if_empty(collection)
        raise
    summary = {
        key: sum(getattr(r, key) for r in reports)
        for key in ("added", "unchanged", "duplicates", "replaced", "removed")
    }
    failed = [pair for r in reports for pair in r.failed]
    seconds = sum(r.seconds for r in reports)
    if as_json:
        out.print_json(
            data={
                **summary,
                "failed": [{"source": s, "reason": r} for s, r in failed],
                "seconds": round(seconds, 3),
                "index": kind,
            }
        )
        return
    for source, reason in failed:
        err.print(f"[yellow]skipped[/] {source}: {reason}", highlight=False)
    rate = summary["added"] / seconds if seconds else 0.0
    out.print(
        f"added {summary['added']}, unchanged {summary['unchanged']}, "
        f"duplicates {summary['duplicates']}, replaced {summary['replaced']}, "
        f"failed {len(failed)} in {seconds:.1f} s ({rate:.1f} images/s); index: {kind}"
    )
    if summary["removed"]:
        out.print(
            f"skipped {summary['removed']} images removed earlier with `lookalike remove` "
            "(--include-removed adds them again)"
        )


@app.command()
def embed(
    source: Annotated[
        str, typer.Argument(help="Folder, list file (.txt), CSV/Parquet manifest, image or URL.")
    ],
    out_dir: Annotated[
        str, typer.Option("--out", help="Folder (or pyarrow URI) to write Parquet shards to.")
    ],
    model: Annotated[
        str | None, typer.Option(help="Model spec (default: the CLIP default).")
    ] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file for the model.")] = None,
    ray: RayOpt = True,  # accepted so that `embed SOURCE --ray --out DIR` reads as it runs
    ray_address: RayAddressOpt = None,
    ray_actors: RayActorsOpt = None,
    ray_batch_size: RayBatchOpt = 64,
    ray_gpus_per_actor: RayGpusOpt = None,
    allow_private_urls: AllowPrivate = False,
    runtime: RuntimeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Embed the images of SOURCE on Ray into Parquet shards (vectors, sizes, hashes,
    metadata, model spec), for a cluster that cannot reach the collection: add them to a
    collection with `lookalike import`."""
    from .distributed import embed_to_parquet
    from .encoders import DEFAULT_MODEL
    from .fetch import FetchPolicy

    _count_items([source])  # a missing source fails here, before the model loads
    report = embed_to_parquet(
        source,
        out_dir,
        model=model or DEFAULT_MODEL,
        weights=weights,
        ray=_ray_options(ray_address, ray_actors, ray_batch_size, ray_gpus_per_actor),
        runtime=runtime,
        fetch_policy=FetchPolicy(allow_private=allow_private_urls),
    )
    if as_json:
        failed = [{"source": s, "reason": r} for s, r in report.failed]
        out.print_json(data={"rows": report.rows, "failed": failed, "model": report.model})
        return
    for locator, reason in report.failed:
        err.print(f"[yellow]failed[/] {locator}: {reason}", highlight=False)
    out.print(
        f"wrote {report.rows} rows ({len(report.failed)} failed) of {report.model} "
        f"to {report.out}; add them with `lookalike import {report.out} -c COLLECTION`",
        highlight=False,
    )


@app.command("import")
def import_shards(
    folder: Annotated[Path, typer.Argument(help="Folder of shards written by `lookalike embed`.")],
    collection: Annotated[Path, typer.Option("--collection", "-c", help="Collection directory.")],
    strict: Annotated[bool, typer.Option(help="Stop at the first bad image.")] = False,
    include_removed: Annotated[
        bool,
        typer.Option(help="Add again images removed with `lookalike remove` (skipped otherwise)."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add the Parquet shards of `lookalike embed` to a collection of the same model."""
    from .distributed import import_parquet

    with _open(collection) as col:
        report = import_parquet(col, folder, strict=strict, include_removed=include_removed)
    if as_json:
        out.print_json(data=report.to_dict() | {"ids": None})
        return
    for source, reason in report.failed:
        err.print(f"[yellow]skipped[/] {source}: {reason}", highlight=False)
    out.print(
        f"added {report.added}, unchanged {report.unchanged}, duplicates {report.duplicates}, "
        f"replaced {report.replaced}, failed {len(report.failed)} in {report.seconds:.1f} s"
    )


@app.command()
@query_options()
def search(
    collection: CollectionArg,
    query: Query,
    allow_private_urls: AllowPrivate = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    runtime: RuntimeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Print the images most similar to the query: rank, score, id, path."""
    empty_reason = "the server found nothing: check --filter and --exclude-id"
    if server:
        from .client import Client

        with Client(server, api_key) as remote:
            hits = remote.search(str(collection), query)
    else:
        with _open(collection, allow_private_urls, runtime) as col:
            hits = col.search(query)
            if not hits:
                empty_reason = _why_empty(col, collection, dict(query.filter or {}))
    if as_json:
        out.print_json(data=[h.to_dict() for h in hits])
        return
    if not hits:
        out.print(f"no results: {empty_reason}", highlight=False, markup=False)
        return
    table = Table("rank", "score", "id", "path", box=None)
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), f"{hit.score:.4f}", str(hit.id), hit.locator)
    out.print(table)


@app.command()
@query_options(k=None, ranking=False)
def count(
    collection: CollectionArg,
    query: Query,
    min_score: Annotated[
        float, typer.Option("--min-score", help="Count images scoring at least this (-1 to 1).")
    ],
    allow_private_urls: AllowPrivate = False,
    server: ServerOpt = None,
    api_key: ApiKeyOpt = None,
    runtime: RuntimeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """How many images score at least --min-score for a query (the options of `search`):
    exact up to 200,000 images, else estimated from a sample with a 95 % interval."""
    if server:
        from .client import Client

        with Client(server, api_key) as remote:
            counted = remote.count(str(collection), query, min_score=min_score)
    else:
        with _open(collection, allow_private_urls, runtime) as col:
            counted = col.count(query, min_score=min_score)
    if as_json:
        out.print_json(data=counted.to_dict())
    elif counted.exact:
        out.print(f"{counted.estimate} of {counted.total} images (exact)", highlight=False)
    else:
        out.print(
            f"about {counted.estimate} of {counted.total} images (95 %: {counted.low}-"
            f"{counted.high}; from a sample of {counted.sampled})",
            highlight=False,
        )


def _why_empty(col: Any, path: Path, filters: dict[str, Any]) -> str:
    """Why a search found nothing, in terms of the collection and the command's options."""
    if len(col) == 0:
        return f"{path} holds no images; add some with `lookalike index SOURCES -c {path}`"
    if not filters:
        return "every image was excluded (--id queries and --exclude-id are left out)"
    keys = col.backend.metadata_keys()
    known = ", ".join(keys) if keys else "none"
    unknown = sorted(set(filters) - set(keys))
    if unknown:
        return f"no image has the metadata key {', '.join(unknown)} (keys: {known})"
    hint = next(
        (
            f" (did you mean --filter {key}={value[1:]}?)"
            for key, value in filters.items()
            if isinstance(value, str) and value.startswith("=")
        ),
        "",
    )
    wanted = ", ".join(f"{key}={value!r}" for key, value in filters.items())
    return f"no image has metadata {wanted}{hint}; keys: {known}"


@app.command()
def info(collection: CollectionArg, as_json: JsonOpt = False) -> None:
    """Count, model, dimension, index kind and size on disk of a collection."""
    from dataclasses import asdict

    with _open(collection) as col:
        stats = asdict(col.stats())
    if as_json:
        out.print_json(data=stats)
        return
    for key, value in stats.items():
        out.print(f"{key:>14}  {value}", highlight=False)


@app.command()
def remove(
    collection: CollectionArg,
    id: Annotated[list[int] | None, typer.Option("--id", help="Image id (repeatable).")] = None,
    path: Annotated[list[str] | None, typer.Option(help="Image path or URL (repeatable).")] = None,
) -> None:
    """Remove images from a collection by id or path; they never come back in results."""
    if not id and not path:
        raise BadInputError("give --id or --path")
    with _open(collection) as col:
        removed = col.remove(ids=id or (), paths=path or ())
    out.print(f"removed {removed}")


IdsOpt = Annotated[list[int] | None, typer.Option("--id", help="Image id (repeatable).")]
FromOpt = Annotated[
    Path | None,
    typer.Option("--from", help='A JSON list of objects with an "id" (search --json, export).'),
]


@app.command("tag")
def tag_command(
    collection: CollectionArg,
    tag: Annotated[str, typer.Argument(help="The tag, e.g. labeled or exported:batch-3.")],
    id: IdsOpt = None,
    from_: FromOpt = None,
) -> None:
    """Give images a tag, by id or from a results file; searches can then skip them."""
    ids = _ids_given(id, from_)
    with _open(collection) as col:
        out.print(f"tagged {col.tag(ids, tag)} of {len(ids)}", highlight=False)


@app.command("untag")
def untag_command(
    collection: CollectionArg,
    tag: Annotated[str, typer.Argument(help="The tag to take away.")],
    id: IdsOpt = None,
    from_: FromOpt = None,
) -> None:
    """Take a tag from images, by id or from a results file."""
    ids = _ids_given(id, from_)
    with _open(collection) as col:
        out.print(f"untagged {col.untag(ids, tag)} of {len(ids)}", highlight=False)


@app.command("tags")
def tags_command(
    collection: CollectionArg,
    id: Annotated[int | None, typer.Option("--id", help="List this image's tags.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the tags in use and how many images hold each, or one image's tags."""
    with _open(collection) as col:
        found: Any = col.tags(id) if id is not None else col.tag_counts()
    if as_json:
        out.print_json(data=found)
    elif id is not None:
        for name in found:
            out.print(name, highlight=False, markup=False)
    else:
        for name, count in found.items():
            out.print(f"{count:>8}  {name}", highlight=False, markup=False)


def _ids_given(ids: list[int] | None, results: Path | None) -> list[int]:
    """Ids from --id options and a --from results file (a JSON list of objects with "id")."""
    found = list(ids or [])
    if results is not None:
        try:
            data = json.loads(results.read_text(encoding="utf-8"))
        except OSError as error:
            raise BadInputError(f"cannot read {results}: {error.strerror}") from None
        except ValueError:
            raise BadInputError(f"{results} is not JSON (give what search --json writes)") from None
        if not isinstance(data, list) or not all(
            isinstance(e, dict) and isinstance(e.get("id"), int) for e in data
        ):
            raise BadInputError(f'{results} must be a JSON list of objects with an integer "id"')
        found += [e["id"] for e in data]
    if not found:
        raise BadInputError("give --id or --from")
    return found


@app.command()
@query_options(k=None)
def export(
    collection: CollectionArg,
    query: Query,
    out_path: Annotated[Path, typer.Option("--out", help="File or new folder to write.")],
    format: Annotated[
        str,
        typer.Option("--format", help="json, jsonl, csv, folder, label-studio, cvat or fiftyone."),
    ] = "jsonl",
    k: Annotated[int, typer.Option("-k", "--k", help="How many results (up to 1,000,000).")] = 1000,
    tag: Annotated[
        str | None, typer.Option("--tag", help="Tag what is exported, e.g. exported:batch-3.")
    ] = None,
    link: Annotated[
        bool, typer.Option(help="Symlink image files instead of copying them.")
    ] = False,
    labels: Annotated[
        str | None,
        typer.Option(help="Comma-separated class labels; the first is pre-selected."),
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="label-studio: URL of a lookalike server serving COLLECTION.")
    ] = None,
    local_files_root: Annotated[
        str | None, typer.Option(help="label-studio: Label Studio's LOCAL_FILES_DOCUMENT_ROOT.")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(help="The collection's name on the server [default: its folder's]."),
    ] = None,
    allow_private_urls: AllowPrivate = False,
    runtime: RuntimeOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Write the results of a search to a file or folder, for people or a labeling tool."""
    from .export import MAX_EXPORT_K

    if isinstance(k, int) and not 1 <= k <= MAX_EXPORT_K:
        raise BadInputError(f"-k must be from 1 to {MAX_EXPORT_K:,}")
    label_list = [part.strip() for part in labels.split(",")] if labels else []
    with _open(collection, allow_private_urls, runtime) as col:
        report = col.export(
            out_path,
            format,
            k=k,
            tag=tag,
            link=link,
            labels=label_list,
            base_url=base_url,
            local_files_root=local_files_root,
            name=name,
            query=query,
        )
    if as_json:
        out.print_json(data=report.to_dict())
        return
    for hit_id, reason in report.skipped[:20]:
        err.print(f"[yellow]skipped[/] {hit_id}: {escape(reason)}", highlight=False)
    if len(report.skipped) > 20:
        err.print(f"... and {len(report.skipped) - 20} more skipped", highlight=False)
    tagged = f", tagged {report.tagged} {tag!r}" if tag else ""
    out.print(
        f"exported {report.written} ({format}) to {out_path}{tagged}; "
        f"skipped {len(report.skipped)}",
        highlight=False,
        markup=False,
    )


@app.command()
def verify(
    collection: CollectionArg,
    repair: Annotated[
        bool,
        typer.Option(
            help="Fix what can be fixed (interrupted writes, a damaged database or index, "
            "lost vectors, duplicate rows); rows and vectors are kept."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check that rows, vectors, index and files of a collection agree."""
    from dataclasses import asdict

    from .verify import verify_path

    report = verify_path(collection, repair=repair)
    if as_json:
        out.print_json(data={**asdict(report), "ok": report.ok})
    else:
        out.print(f"{report.rows} rows, {report.vectors} vectors", highlight=False)
        for problem in report.problems:
            state = (
                "repaired"
                if problem.repaired
                else ("repairable with --repair" if problem.repairable else "needs attention")
            )
            out.print(f"- {problem.what} [{state}]", highlight=False, markup=False)
        out.print("ok" if report.ok else "problems found", highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def tune(
    collection: CollectionArg,
    texts: Annotated[
        Path | None,
        typer.Option(
            help="A file of text queries like your users' (one a line) to tune on; "
            "default: stored images searched as new ones.",
            dir_okay=False,
        ),
    ] = None,
    target_recall: Annotated[
        float, typer.Option(help="Recall@20 to reach, in (0, 1].", min=0.01, max=1.0)
    ] = 0.95,
    as_json: JsonOpt = False,
) -> None:
    """Re-tune the trained index's search settings to a target recall, without retraining."""
    lines: list[str] = []
    if texts is not None:
        try:
            lines = [t.strip() for t in texts.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as error:
            raise typer.BadParameter(f"cannot read {texts}: {error}") from error
        lines = [t for t in lines if t]
        if not lines:
            raise typer.BadParameter(f"{texts} holds no text queries")
    with _open(collection) as col:
        reached = col.tune_index(texts=lines, target_recall=target_recall)
    if as_json:
        out.print_json(data={"recall_at_20": reached, "target_recall": target_recall})
    else:
        out.print(
            f"recall@20 {reached:.3f} on the tuning queries (target {target_recall})",
            highlight=False,
        )


DUPLICATE_FORMATS = ("table", "json", "csv")


@app.command()
def duplicates(
    collection: CollectionArg,
    threshold: Annotated[
        float, typer.Option(help="Cosine from which two images count as near copies, in (0, 1].")
    ] = 0.95,
    exact: Annotated[
        bool, typer.Option("--exact", help="Only exact copies (same content); fast, no vectors.")
    ] = False,
    format: Annotated[str, typer.Option(help="Output: table, json or csv.")] = "table",
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV output: one line per image.")] = False,
    tag_extra: Annotated[
        str | None,
        typer.Option(help="Tag every image but each group's keeper with this tag."),
    ] = None,
) -> None:
    """Groups of copies in a collection, each with the image to keep: the one with the most
    pixels, then bytes, then the lowest id."""
    chosen = {name for name, on in (("json", as_json), ("csv", as_csv)) if on}
    if len(chosen) > 1 or (chosen and format not in ("table", *chosen)):
        raise BadInputError("choose one output: --json, --csv or --format")
    format = chosen.pop() if chosen else format
    if format not in DUPLICATE_FORMATS:
        raise BadInputError(
            f"--format must be one of {', '.join(DUPLICATE_FORMATS)}; not {format!r}"
        )
    from .duplicates import check_threshold

    check_threshold(threshold)  # before the collection opens
    if tag_extra is not None and not tag_extra.strip():
        raise BadInputError("--tag-extra needs a tag name")
    with _open(collection) as col:
        if tag_extra is not None and not hasattr(col, "tag"):
            raise BadInputError("--tag-extra needs image tags, which this lookalike lacks")
        with _search_progress(len(col), quiet=exact) as progress:
            groups = col.duplicates(threshold, exact=exact, progress=progress)
        paths = {i: col.get(i).locator for g in groups for i in g.ids}
        extras = [i for g in groups for i in g.extras]
        tagged = col.tag(extras, tag_extra) if tag_extra and extras else 0
    _print_duplicates(groups, paths, format)
    if tag_extra:
        err.print(f"tagged {tagged} images {tag_extra!r}", highlight=False, markup=False)


@contextlib.contextmanager
def _search_progress(total: int, quiet: bool = False) -> Iterator[Any]:
    """A progress bar on stderr, fed by the ``progress(done, total)`` callback it yields."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(TextColumn("searching"), *columns, console=err, disable=quiet) as bar:
        task = bar.add_task("search", total=total)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _print_duplicates(groups: list[Any], paths: dict[int, str], format: str) -> None:
    """Groups as a table (one line per image), JSON (one object per group) or CSV."""
    if format == "json":
        out.print_json(data=[{**g.to_dict(), "paths": [paths[i] for i in g.ids]} for g in groups])
        return
    lines = [
        (n, i, i == g.keeper, g.exact, g.score, paths[i])
        for n, g in enumerate(groups, start=1)
        for i in g.ids
    ]
    if format == "csv":
        import csv

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["group", "id", "keeper", "exact", "score", "path"])
        writer.writerows(lines)
        return
    if not groups:
        out.print("no duplicates", highlight=False)
        return
    table = Table("group", "id", "keep", "score", "path", box=None)
    for n, i, keeper, exact_copy, score, path in lines:
        table.add_row(
            str(n),
            str(i),
            "keep" if keeper else "",
            "exact" if exact_copy else f"{score:.4f}",
            path,
        )
    out.print(table)
    extras = sum(len(g.ids) - 1 for g in groups)
    out.print(f"{len(groups)} groups, {extras} copies besides the keepers", highlight=False)


@app.command()
def serve(
    collections: Annotated[
        list[str],
        typer.Argument(
            help="Collection directories, each served under its folder name or as NAME=DIR."
        ),
    ],
    host: Annotated[
        str,
        typer.Option(
            help="Address to bind; keep 127.0.0.1 unless a "
            "reverse proxy or firewall stands in front."
        ),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            help="Require this API key (repeatable; also $LOOKALIKE_API_KEYS, comma-separated)."
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Allow browser calls from this origin (repeatable; default: CORS off)."),
    ] = None,
    max_k: Annotated[int, typer.Option(help="Largest k a request may ask for.")] = 1000,
    max_batch: Annotated[
        int, typer.Option(help="Most searches one /search/batch request may hold.")
    ] = 100,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, in MB.")] = 32,
    rate_limit: Annotated[
        int, typer.Option(help="Requests per minute per client address (0: no limit).")
    ] = 0,
    allow_private_urls: AllowPrivate = False,
    show_paths: Annotated[
        bool | None,
        typer.Option(
            "--show-paths/--hide-paths",
            help="Give each hit's path relative to its indexed folder, not just its file name "
            "(default: shown when bound to localhost, hidden otherwise).",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="Torch device, e.g. cpu or cuda.")] = None,
    runtime: RuntimeOpt = "auto",
    threads: ThreadsOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Server processes (each loads the model; rate limits count per process)."
        ),
    ] = 1,
    auth_failures: Annotated[
        int,
        typer.Option(help="Wrong API keys per minute per client address before 429 (0: no limit)."),
    ] = 10,
    trust_proxy: Annotated[
        list[str] | None,
        typer.Option(
            help="Believe X-Forwarded-For from this proxy address or network (repeatable; "
            "default: believe no one)."
        ),
    ] = None,
    max_connections: Annotated[
        int, typer.Option(help="Open connections per process; idle ones close first when full.")
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's head.")
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a client has to send a request's body.")
    ] = 60.0,
    keep_alive: Annotated[
        float, typer.Option(help="Seconds an idle connection stays open between requests.")
    ] = 5.0,
    clip_front: Annotated[
        bool,
        typer.Option(
            help="Serve clip-retrieval's web front end at /clip-front/ "
            "(needs: pip install --no-deps clip-retrieval==2.45.0)."
        ),
    ] = False,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="This server's URL as clients reach it (behind a proxy), for absolute links "
            "[default: the request's]."
        ),
    ] = None,
    caption_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Metadata column holding captions for clip-retrieval clients, as COLUMN or "
            "NAME=COLUMN (repeatable) [default: caption]."
        ),
    ] = None,
    url_secret: Annotated[
        str | None,
        typer.Option(
            envvar="LOOKALIKE_URL_SECRET",
            show_envvar=True,
            help="Secret that signs image links for labeling tools (lookalike sign-url) "
            "[default: one made at start].",
        ),
    ] = None,
) -> None:
    """Serve collections over HTTP: JSON API, OpenAPI spec at /docs, web page at /."""
    import secrets

    from .server import ServerSettings
    from .server.launch import ServeConfig, serve_one, serve_workers
    from .server.settings import is_local_host
    from .signing import secret_bytes

    settings = ServerSettings.with_env_keys(
        api_keys=tuple(api_key or ()),
        cors_origins=tuple(cors_origin or ()),
        max_k=max_k,
        max_batch=max_batch,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        rate_limit_per_minute=rate_limit,
        show_paths=is_local_host(host) if show_paths is None else show_paths,
        auth_failures_per_minute=auth_failures,
        trusted_proxies=tuple(trust_proxy or ()),
        max_connections=max_connections,
        header_timeout_s=header_timeout,
        body_timeout_s=body_timeout,
        keep_alive_s=keep_alive,
        clip_front=clip_front,
        public_url=public_url,
        caption_columns=tuple(caption_column or ()),
        # made here, not per worker, so every worker process checks links alike
        url_secret=secret_bytes(url_secret).decode() if url_secret else secrets.token_urlsafe(32),
    )
    if clip_front:
        from .server.clip_front import build_folder

        build_folder()  # fail here, clearly, if the wheel is missing
    # clip-retrieval routes answer [] when they cannot serve a request; the log says why
    logging.getLogger("lookalike.server.compat").setLevel(logging.WARNING)
    config = ServeConfig.from_entries(
        collections,
        settings,
        device=device,
        runtime=runtime,
        threads=threads,
        allow_private_urls=allow_private_urls,
    )
    for path in config.collections.values():
        _require_collection(Path(path))
    announce = (
        f"serving {', '.join(config.collections)} on http://{host}:{port}"
        f"{f' with {workers} worker processes' if workers > 1 else ''}"
    )
    if clip_front:
        front = (public_url or f"http://{host}:{port}").rstrip("/")
        err.print(f"clip-retrieval's front end: {front}/clip-front/", highlight=False)
    if workers > 1:
        # each worker process opens the collections itself; indexes and vectors are
        # memory-mapped, so the page cache holds them once for all
        for path in config.collections.values():
            _open(Path(path)).close()  # fail here, clearly, rather than in every worker
        err.print(announce, highlight=False)
        serve_workers(config, host, port, workers)
    else:
        with _loading("loading the models"):
            served = config.build_app()  # opens the collections: fails before the announcement
        err.print(announce, highlight=False)
        serve_one(served, settings, host, port)


@app.command("sign-url")
def sign_url(
    server: Annotated[
        str, typer.Argument(help="The server's URL as the labeling tool reaches it.")
    ],
    collection: Annotated[str, typer.Argument(help="Collection name on that server.")],
    ids: Annotated[list[int], typer.Argument(help="Image ids.")],
    ttl: Annotated[int, typer.Option(help="Seconds the links last [default: 7 days].")] = 7
    * 24
    * 3600,
    url_secret: Annotated[
        str | None,
        typer.Option(
            envvar="LOOKALIKE_URL_SECRET",
            show_envvar=True,
            help="The secret the server was started with.",
        ),
    ] = None,
) -> None:
    """Print links that open one image each without an API key, until they expire."""
    from .signing import sign_image_url

    for item_id in ids:
        out.print(sign_image_url(server, collection, item_id, url_secret, ttl_s=ttl))


@app.command()
def demo(
    workdir: Annotated[
        Path | None,
        typer.Option(
            help="Where to write samples and collection [default: a new temporary folder]."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model spec.")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local weights file.")] = None,
    per_kind: Annotated[
        int, typer.Option(min=1, help="Sample images per shape and colour (20 kinds).")
    ] = 8,
) -> None:
    """Generate sample pictures, index them and search them by image, id and text."""
    from . import demo as tour
    from .encoders import DEFAULT_MODEL

    tour.run(workdir, model or DEFAULT_MODEL, str(weights) if weights else None, per_kind)


cache_app = typer.Typer(
    no_args_is_help=True,
    help="The model cache: ONNX exports and compiled models, built once per model and reused.",
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info(as_json: JsonOpt = False) -> None:
    """Where the cache lives, its entries (least recently used first), sizes and total."""
    from .encoders import cache

    found = cache.entries()
    total = sum(e.bytes for e in found)
    if as_json:
        out.print_json(
            data={
                "path": str(cache.cache_root()),
                "max_bytes": cache.max_bytes(),
                "total_bytes": total,
                "entries": [vars(e) for e in found],
            }
        )
        return
    out.print(f"cache: {cache.cache_root()}", highlight=False)
    for entry in found:  # plain lines: a table would wrap them on a narrow terminal
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
        out.print(
            f"{entry.key}  {_size(entry.bytes):>9}  used {used}  {entry.what}",
            highlight=False,
            markup=False,
        )
    out.print(
        f"{len(found)} entries, {_size(total)} of at most {_size(cache.max_bytes())} "
        f"(${cache.MAX_BYTES_ENV})",
        highlight=False,
    )


@cache_app.command("clear")
def cache_clear(
    older_than: Annotated[
        str | None,
        typer.Option(help="Only entries unused for this long, e.g. 30d, 12h, 90m [default: all]."),
    ] = None,
) -> None:
    """Remove cache entries; they are built again when next needed."""
    from .encoders import cache

    removed = cache.clear(_duration(older_than) if older_than else None)
    freed = sum(e.bytes for e in removed)
    out.print(f"removed {len(removed)} entries, {_size(freed)}", highlight=False)


def _duration(text: str) -> float:
    """Seconds of a duration such as 30d, 12h, 90m, 45s."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    number, unit = text[:-1], text[-1:].lower()
    try:
        if unit in units and float(number) >= 0:
            return float(number) * units[unit]
    except ValueError:
        pass
    raise BadInputError(f"--older-than {text!r} must look like 30d, 12h, 90m or 45s")


def _size(count: float) -> str:
    """Bytes in a human unit."""
    if count < 1000:
        return f"{count:.0f} B"
    for unit in ("KB", "MB"):
        count /= 1000
        if count < 1000:
            return f"{count:.1f} {unit}"
    return f"{count / 1000:.1f} GB"


def progress_bar(total: int, quiet: bool = False) -> Any:
    """A progress display for ``Collection.add(progress=...)`` over ``total`` items of one or
    more sources: images done (stored, skipped or failed), their rate and the time left."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    class IngestProgress:
        def __init__(self) -> None:
            self.bar = Progress(
                TextColumn("indexing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err,
                disable=quiet,
            )
            self.task = self.bar.add_task("index", total=total, rate=0.0)
            self.done_before = 0  # items of the sources already finished
            self.seconds_before = 0.0

        def __enter__(self) -> IngestProgress:
            self.bar.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.bar.__exit__(*exc)  # type: ignore[arg-type]

        def __call__(self, report: Any) -> None:
            done = self.done_before + report.seen
            seconds = self.seconds_before + report.seconds
            self.bar.update(self.task, completed=done, rate=done / seconds if seconds else 0.0)

        def finish_source(self, report: Any) -> None:
            """Count a finished source's items; later reports start from zero again."""
            self(report)
            self.done_before += report.seen
            self.seconds_before += report.seconds

    return IngestProgress()


@contextlib.contextmanager
def _loading(what: str, quiet: bool = False) -> Iterator[None]:
    """A spinner on a terminal while something slow and silent runs (loading a model)."""
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(f"{what} …"):
        yield


def _count_items(sources: list[str]) -> int:
    """How many items the sources name; a missing source or a bad manifest fails here."""
    from .sources import iter_source

    return sum(1 for source in sources for _ in iter_source(source))


def _recorded_model(collection: Path) -> str | None:
    """The model spec an existing collection records, if it can be read."""
    from .layout import MANIFEST

    try:
        recorded = json.loads((collection / MANIFEST).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None  # missing (a new collection) or unreadable: create/open says which
    return recorded if isinstance(recorded, str) else None


def _discard_if_empty(collection: Path) -> None:
    """Remove a collection folder this command made when nothing was stored in it."""
    import shutil

    from .collection import Collection
    from .layout import MANIFEST

    if not collection.is_dir():
        return
    if (collection / MANIFEST).exists():
        try:
            with Collection.open(collection) as col:
                if col.backend.count:
                    return
        except LookalikeError:
            pass  # half made: nothing in it is worth keeping
    shutil.rmtree(collection, ignore_errors=True)


def main() -> None:
    """Entry point: run the app, turning lookalike errors into one clear line."""
    _print_anything()
    logging.basicConfig(level=logging.ERROR, format="%(message)s")
    # exports and cache evictions take long or free space: say so
    logging.getLogger("lookalike.encoders").setLevel(logging.WARNING)
    try:
        app()
    except LookalikeError as error:
        err.print(f"[red]error:[/] {error}", highlight=False)
        sys.exit(1)
    except OSError as error:  # a full disk, a vanished file: the reason, not a traceback
        err.print(f"[red]error:[/] {escape(_os_error(error))}", highlight=False)
        sys.exit(1)
    except sqlite3.Error as error:
        err.print(f"[red]error:[/] the collection database failed: {escape(str(error))}")
        sys.exit(1)


def _print_anything() -> None:
    """Under an ASCII locale (``LC_ALL=C`` with ``PYTHONUTF8=0``) print "…" or an accented
    path as an escape rather than fail on it."""
    for stream in (sys.stdout, sys.stderr):
        if not _is_utf8(stream) and isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _os_error(error: OSError) -> str:
    """One line for an operating-system error, with advice for a full disk."""
    where = f" ({error.filename})" if error.filename else ""
    text = f"{error.strerror or error}{where}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        text += "; the batches committed so far are kept: free some space and run it again"
    return text


def _add_labeling_commands() -> None:
    """``labelstudio`` and ``cvat`` live in their own module (lookalike.cli_labeling)."""
    from .cli_labeling import CliParts, install

    install(app, CliParts(_open, out, err))


_add_labeling_commands()
