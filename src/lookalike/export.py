"""Exports: a search's results written out for people and labeling tools, as they come.

Formats: ``json``, ``jsonl``, ``csv`` (one record per hit: rank, id, score, path or URL,
size, tags, metadata); ``folder`` (copies or symlinks of the image files and a
``manifest.csv``); ``label-studio`` (a task list and a labeling config); ``cvat`` (CVAT for
images 1.1 XML and ``images.txt``); ``fiftyone`` (a FiftyOneImageClassificationDataset
directory). An export of more results than one search returns (``MAX_K``) pages through
searches that leave out what came before, and hits are written page by page, never held all
at once. ``tag=`` tags what was exported, so the next search can skip it (``exclude_tags``).

>>> export(col.search(text="police car", k=500), "cvat", "out/", collection=col)  # doctest: +SKIP
>>> col.export("tasks.json", "label-studio", text="police car", k=20_000,
...            base_url="http://127.0.0.1:8000", labels=["police car", "other"])  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path, PurePath
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

from .errors import BadInputError
from .layout import write_atomic
from .query import MAX_K, Query, QueryPart
from .tags import check_tag
from .types import Hit

if TYPE_CHECKING:
    import numpy as np

    from .backends import Backend


class Collection(Protocol):
    """What an export uses of :class:`lookalike.Collection` (named apart: no import circle)."""

    model: str
    path: Path
    backend: Backend

    def embed(self, query: Query) -> np.ndarray: ...

    def search(self, query: Query) -> list[Hit]: ...

    def tag(self, ids: Iterable[int], tag: str) -> int: ...


FORMATS = ("json", "jsonl", "csv", "folder", "label-studio", "cvat", "fiftyone")
STREAM_FORMATS = ("jsonl", "csv")  # formats a server can stream as one response
MAX_EXPORT_K = 1_000_000
DEFAULT_EXPORT_K = 1000
TAG_LOOKUP = 1000  # hits whose tags are read at once
CSV_FIELDS = ("rank", "id", "score", "path", "url", "width", "height", "tags", "metadata")


@dataclass(frozen=True)
class ExportOptions:
    """How hits are written: ``link`` images instead of copying them (folder, fiftyone);
    ``labels`` of a classification task, the first pre-selected as the prediction
    (label-studio, cvat, fiftyone); where Label Studio finds the images: ``base_url`` of a
    ``lookalike serve`` serving the collection as ``name``, or ``local_files_root``, the
    LOCAL_FILES_DOCUMENT_ROOT of Label Studio's local file serving; ``model``, the model spec
    recorded as the predictions' version."""

    link: bool = False
    labels: tuple[str, ...] = ()
    base_url: str | None = None
    local_files_root: str | None = None
    name: str | None = None
    model: str | None = None

    def __post_init__(self) -> None:
        labels = tuple(self.labels)
        for label in labels:
            check_tag(label)  # the same rules: printable, non-empty, at most 200 characters
        if len(set(labels)) != len(labels):
            raise BadInputError("labels must be distinct")
        object.__setattr__(self, "labels", labels)
        if self.base_url and self.local_files_root:
            raise BadInputError("give --base-url or --local-files-root, not both")
        if self.base_url and urlsplit(self.base_url).scheme not in {"http", "https"}:
            raise BadInputError(f"--base-url must be an http(s) URL (got {self.base_url!r:.80})")


@dataclass
class ExportReport:
    """What an export wrote: the hits ``written``, those ``skipped`` (id, reason), how many
    got the tag, and the files made."""

    format: str
    out: str
    written: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    tagged: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            **vars(self),
            "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
        }


@dataclass(frozen=True)
class Record:
    """One exported hit: its rank (from 1), the hit and its tags."""

    rank: int
    hit: Hit
    tags: list[str]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: rank, tags, and the hit's fields (as ``search --json`` gives)."""
        hit = self.hit  # field by field: dataclasses.asdict deep-copies, 5x slower
        return {
            "rank": self.rank,
            "id": hit.id,
            "score": hit.score,
            "path": hit.path,
            "url": hit.url,
            "width": hit.width,
            "height": hit.height,
            "metadata": hit.metadata,
            "tags": self.tags,
        }


def check_export_k(k: Any) -> int:
    """``k`` if it is a usable number of results to export."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_EXPORT_K:
        raise BadInputError(f"an export's k must be an integer from 1 to {MAX_EXPORT_K:,}")
    return k


def check_format(format: Any) -> str:
    """``format`` if it names an export format."""
    if format not in FORMATS:
        raise BadInputError(
            f"unknown export format {format!r:.40}; use one of {', '.join(FORMATS)}"
        )
    return str(format)


def search_all(collection: Collection, query: Query, k: int) -> Iterator[Hit]:
    """The best ``k`` hits of ``query`` (any number up to ``MAX_EXPORT_K``), best first, one
    search of at most ``MAX_K`` at a time. The query is embedded now, once (a bad query fails
    here, before anything is written); each later search leaves out the ids before it.
    ``dedupe`` applies within each search of ``MAX_K``."""
    check_export_k(k)
    if query.relevant or query.irrelevant or query.diverse:
        # ranked by a model of the marks, or re-ranked for variety: no one vector to page by,
        # so each page runs the whole query
        return _pages(collection, replace(query, k=min(k, MAX_K)), k)
    vector = collection.embed(query)
    base = replace(
        query,
        parts=(QueryPart("vector", vector),),
        exclude_ids=(*query.exclude_ids, *query.query_ids),
        include_self=False,
        model=None,
        k=min(k, MAX_K),
    )
    return _pages(collection, base, k)


def _pages(collection: Collection, base: Query, k: int) -> Iterator[Hit]:
    """The hits of ``base``, ``k`` in all, a search of at most ``MAX_K`` at a time, each leaving
    out the ids before it. The first search runs now, so a bad query (an unknown marked id)
    fails before anything is written or streamed."""
    wanted = min(k, MAX_K)
    return _following(collection, base, k, wanted, collection.search(replace(base, k=wanted)))


def _following(
    collection: Collection, base: Query, k: int, wanted: int, page: list[Hit]
) -> Iterator[Hit]:
    done: list[int] = []
    while True:
        yield from page
        done += [hit.id for hit in page]
        if len(page) < wanted or len(done) >= k:
            return
        wanted = min(k - len(done), MAX_K)
        page = collection.search(replace(base, k=wanted, exclude_ids=(*base.exclude_ids, *done)))


def records(hits: Iterable[Hit], collection: Collection | None = None) -> Iterator[Record]:
    """Hits as records, ranked from 1, with their tags (read a block at a time) when the
    collection is given."""
    stream = iter(hits)
    rank = 0
    while block := list(islice(stream, TAG_LOOKUP)):
        tags = collection.backend.tags_of([h.id for h in block]) if collection else {}
        for hit in block:
            rank += 1
            yield Record(rank, hit, tags.get(hit.id, []))


def lines(stream: Iterable[Record], format: str) -> Iterator[str]:
    """The records as JSON lines or CSV rows (a header first), one string each."""
    if format == "jsonl":
        for record in stream:
            yield json.dumps(record.to_dict(), ensure_ascii=False, default=str) + "\n"
        return
    if format != "csv":
        raise BadInputError(f"only {' and '.join(STREAM_FORMATS)} stream; not {format!r:.40}")
    yield _csv_row(CSV_FIELDS)
    for record in stream:
        yield _csv_row(_csv_values(record))


def export(
    hits: Iterable[Hit],
    format: str,
    out: str | os.PathLike[str],
    *,
    collection: Collection | None = None,
    tag: str | None = None,
    **options: Any,
) -> ExportReport:
    """Write ``hits`` (e.g. a search's, or :func:`search_all`'s) to ``out`` in ``format``.

    ``out`` is a file for json, jsonl, csv and label-studio (written whole or not at all),
    a new or empty folder for folder, cvat and fiftyone. With ``collection``, records carry
    their tags, predictions its model, and ``tag`` is given to every hit written.
    ``options``: see :class:`ExportOptions`.
    """
    format = check_format(format)
    if tag is not None:
        check_tag(tag)
        if collection is None:
            raise BadInputError("tagging what is exported needs the collection")
    if collection is not None:
        options.setdefault("model", collection.model)
        options.setdefault("name", collection.path.name)
    settings = ExportOptions(**options)
    if format == "label-studio" and not (settings.base_url or settings.local_files_root):
        raise BadInputError(
            "a label-studio export needs --base-url (a lookalike server's URL) or "
            "--local-files-root (Label Studio's LOCAL_FILES_DOCUMENT_ROOT)"
        )
    target = Path(out)
    report = ExportReport(format, str(target))
    written: list[int] = []
    stream = _counting(records(hits, collection), report, written)
    try:
        WRITERS[format](stream, target, settings, report)
    except OSError as error:
        raise BadInputError(
            f"cannot write the export to {error.filename or target}: {error.strerror or error}"
        ) from None
    if tag is not None and collection is not None and written:
        report.tagged = collection.tag(written, tag)
    return report


def _counting(
    stream: Iterable[Record], report: ExportReport, written: list[int]
) -> Iterator[Record]:
    """The records, each counted as written once the writer asks for the next; writers put
    what they cannot write in ``report.skipped`` themselves."""
    for record in stream:
        skipped = len(report.skipped)
        yield record
        if len(report.skipped) == skipped:
            report.written += 1
            written.append(record.hit.id)


# -- files --------------------------------------------------------------------------------


def _into_file(target: Path, write: Callable[[IO[str]], None], report: ExportReport) -> None:
    """Write a file whole or not at all, through ``write`` given its text handle."""
    _require_folder(target.parent)

    def fill(path: Path) -> None:
        with open(path, "w", encoding="utf-8", newline="") as handle:
            write(handle)

    write_atomic(target, fill)
    report.files.append(str(target))


def _write_json(
    stream: Iterable[Record], target: Path, _: ExportOptions, report: ExportReport
) -> None:
    def write(handle: IO[str]) -> None:
        handle.write("[")
        for n, record in enumerate(stream):
            handle.write(",\n" if n else "\n")
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False, default=str))
        handle.write("\n]\n")

    _into_file(target, write, report)


def _write_lines(
    format: str,
) -> Callable[[Iterable[Record], Path, ExportOptions, ExportReport], None]:
    def writer(
        stream: Iterable[Record], target: Path, _: ExportOptions, report: ExportReport
    ) -> None:
        _into_file(target, lambda handle: handle.writelines(lines(stream, format)), report)

    return writer


def _csv_row(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _csv_values(record: Record, *extra: Any) -> list[Any]:
    hit = record.hit
    return [
        record.rank,
        *extra,
        hit.id,
        f"{hit.score:.6f}",
        hit.path or "",
        hit.url or "",
        hit.width,
        hit.height,
        json.dumps(record.tags, ensure_ascii=False),
        json.dumps(hit.metadata, ensure_ascii=False, default=str),
    ]


# -- folders of images ----------------------------------------------------------------------


def _require_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise BadInputError(f"cannot write the export into {folder}: no such folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BadInputError(f"cannot write the export into {folder}: permission denied")


def _new_folder(target: Path) -> Path:
    """``target`` made (its parent must exist), or refused unless it is an empty folder."""
    _require_folder(target.parent)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BadInputError(f"{target} exists and is not an empty folder; choose a new one")
    target.mkdir(exist_ok=True)
    return target


def _place(record: Record, folder: Path, name: str, link: bool, report: ExportReport) -> bool:
    """Copy or link the hit's image file as ``folder/name``; False (and the reason in the
    report) when it cannot be."""
    source = record.hit.path
    if source is None:
        report.skipped.append((record.hit.id, f"stored by URL, not as a file: {record.hit.url}"))
        return False
    if not os.path.isfile(source):
        report.skipped.append((record.hit.id, f"the file {source} is missing"))
        return False
    if link:
        os.symlink(source, folder / name)
    else:
        shutil.copyfile(source, folder / name)
    return True


def _file_name(hit: Hit) -> str:
    """A unique file name for a hit's image: its id, then its own name."""
    return f"{hit.id}_{_base_name(hit)}"


def _base_name(hit: Hit) -> str:
    if hit.path:
        return PurePath(hit.path).name
    return unquote(urlsplit(hit.url or "").path.rstrip("/").rpartition("/")[2]) or f"{hit.id}"


def _write_folder(
    stream: Iterable[Record], target: Path, options: ExportOptions, report: ExportReport
) -> None:
    folder = _new_folder(target)
    manifest = folder / "manifest.csv"
    with open(manifest, "w", encoding="utf-8", newline="") as handle:
        handle.write(_csv_row(("rank", "file", *CSV_FIELDS[1:])))
        for record in stream:
            name = f"{record.rank:06d}_{_file_name(record.hit)}"
            placed = _place(record, folder, name, options.link, report)
            handle.write(_csv_row(_csv_values(record, name if placed else "")))
    report.files.append(str(manifest))


# -- labeling tools -------------------------------------------------------------------------


def _write_label_studio(
    stream: Iterable[Record], target: Path, options: ExportOptions, report: ExportReport
) -> None:
    def tasks() -> Iterator[Record]:
        for record in stream:
            if _image_url(record.hit, options, report) is not None:
                yield record

    def write(handle: IO[str]) -> None:
        handle.write("[")
        for n, record in enumerate(tasks()):
            handle.write(",\n" if n else "\n")
            handle.write(json.dumps(_task(record, options), ensure_ascii=False, default=str))
        handle.write("\n]\n")

    _into_file(target, write, report)
    if options.labels:
        config = target.with_name(f"{target.stem}.label_config.xml")
        write_atomic(config, _label_config(options.labels))
        report.files.append(str(config))


def _task(record: Record, options: ExportOptions) -> dict[str, Any]:
    hit = record.hit
    prediction: dict[str, Any] = {"model_version": options.model, "score": hit.score, "result": []}
    if options.labels:
        prediction["result"] = [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [options.labels[0]]},
            }
        ]
    data = {"image": _image_url(hit, options, None), "lookalike_id": hit.id}
    return {"data": data, "predictions": [prediction]}


def _image_url(hit: Hit, options: ExportOptions, report: ExportReport | None) -> str | None:
    """Where Label Studio reads the hit's image; None (the reason in ``report``) if nowhere."""
    if options.base_url:
        name = quote(options.name or "", safe="")
        return f"{options.base_url.rstrip('/')}/v1/collections/{name}/items/{hit.id}/image"
    if hit.path is None:
        return hit.url
    root = Path(options.local_files_root or "").resolve()
    path = PurePath(hit.path)
    if not path.is_relative_to(root):
        if report is not None:
            report.skipped.append((hit.id, f"{hit.path} is not under --local-files-root {root}"))
        return None
    return f"/data/local-files/?d={quote(path.relative_to(root).as_posix(), safe='/')}"


def _label_config(labels: Sequence[str]) -> str:
    """Label Studio's labeling config of an image classification over ``labels``."""
    view = ET.Element("View")
    ET.SubElement(view, "Image", name="image", value="$image")
    choices = ET.SubElement(view, "Choices", name="label", toName="image", choice="single")
    for label in labels:
        ET.SubElement(choices, "Choice", value=label)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def _write_cvat(
    stream: Iterable[Record], target: Path, options: ExportOptions, report: ExportReport
) -> None:
    """CVAT for images 1.1: ``annotations.xml`` (one ``<tag>`` per image when labels are
    given) and ``images.txt``, the images' paths or URLs, one a line. The images are written
    to a scratch file as they come, since the task's size goes before them."""
    folder = _new_folder(target)
    scratch = folder / ".images.xml.part"
    used: set[str] = set()
    count = 0
    with (
        open(scratch, "w", encoding="utf-8") as images,
        open(folder / "images.txt", "w", encoding="utf-8") as listing,
    ):
        for record in stream:
            hit = record.hit
            name = _base_name(hit)
            name = _file_name(hit) if name in used else name
            used.add(name)
            image = ET.Element(
                "image", id=str(count), name=name, width=str(hit.width), height=str(hit.height)
            )
            if options.labels:
                ET.SubElement(image, "tag", label=options.labels[0], source="auto")
            images.write("  " + ET.tostring(image, encoding="unicode") + "\n")
            listing.write(f"{hit.path or hit.url}\n")
            count += 1
    with open(folder / "annotations.xml", "w", encoding="utf-8") as handle:
        handle.write('<?xml version="1.0" encoding="utf-8"?>\n<annotations>\n')
        handle.write("  <version>1.1</version>\n")
        handle.write(_indented(_cvat_meta(options, count), "  "))
        with open(scratch, encoding="utf-8") as images:
            shutil.copyfileobj(images, handle)
        handle.write("</annotations>\n")
    scratch.unlink()
    report.files += [str(folder / "annotations.xml"), str(folder / "images.txt")]


def _cvat_meta(options: ExportOptions, size: int) -> ET.Element:
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    ET.SubElement(task, "name").text = f"lookalike {options.name or 'export'}"
    ET.SubElement(task, "size").text = str(size)
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for name in options.labels:
        label = ET.SubElement(labels, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "tag"
        ET.SubElement(label, "attributes")
    ET.SubElement(meta, "dumped").text = time.strftime("%Y-%m-%d %H:%M:%S.000000%z")
    return meta


def _indented(element: ET.Element, prefix: str) -> str:
    ET.indent(element, space="  ", level=1)
    return prefix + ET.tostring(element, encoding="unicode") + "\n"


def _write_fiftyone(
    stream: Iterable[Record], target: Path, options: ExportOptions, report: ExportReport
) -> None:
    """A FiftyOneImageClassificationDataset: ``data/<uuid>.<ext>`` and ``labels.json``
    ``{"classes": [...], "labels": {uuid: {"label": 0, "confidence": score} or null}}`` (the
    first label predicted, the score as its confidence); uuids are lookalike ids. Scores,
    tags, paths and metadata go to ``metadata.json``, by uuid."""
    folder = _new_folder(target)
    data = folder / "data"
    data.mkdir()
    with (
        open(folder / "labels.json", "w", encoding="utf-8") as labels,
        open(folder / "metadata.json", "w", encoding="utf-8") as extra,
    ):
        labels.write('{"classes": ' + json.dumps(list(options.labels), ensure_ascii=False))
        labels.write(', "labels": {')
        extra.write("{")
        first = True
        for record in stream:
            hit = record.hit
            uuid = str(hit.id)
            if not _place(
                record, data, uuid + PurePath(hit.path or "").suffix, options.link, report
            ):
                continue
            target_value = {"label": 0, "confidence": hit.score} if options.labels else None
            comma = "" if first else ","
            labels.write(f'{comma}\n  "{uuid}": {json.dumps(target_value)}')
            extra.write(
                f'{comma}\n  "{uuid}": '
                + json.dumps(_sidecar(record), ensure_ascii=False, default=str)
            )
            first = False
        labels.write("\n}}\n")
        extra.write("\n}\n")
    report.files += [str(folder / "labels.json"), str(folder / "metadata.json")]


def _sidecar(record: Record) -> dict[str, Any]:
    hit = record.hit
    return {
        "lookalike_id": hit.id,
        "rank": record.rank,
        "score": hit.score,
        "source": hit.path or hit.url,
        "tags": record.tags,
        "metadata": hit.metadata,
    }


WRITERS: Mapping[str, Callable[[Iterable[Record], Path, ExportOptions, ExportReport], None]] = {
    "json": _write_json,
    "jsonl": _write_lines("jsonl"),
    "csv": _write_lines("csv"),
    "folder": _write_folder,
    "label-studio": _write_label_studio,
    "cvat": _write_cvat,
    "fiftyone": _write_fiftyone,
}


class Exporting:
    """``Collection.export``: a search written out (see :mod:`lookalike.export`)."""

    def export(
        self,
        out: str | os.PathLike[str],
        format: str = "jsonl",
        *,
        k: int = DEFAULT_EXPORT_K,
        tag: str | None = None,
        query: Query | Iterable[Mapping[str, Any] | QueryPart] | None = None,
        link: bool = False,
        labels: Sequence[str] = (),
        base_url: str | None = None,
        local_files_root: str | None = None,
        name: str | None = None,
        **search: Any,
    ) -> ExportReport:
        """Export the best ``k`` results (up to 1,000,000) of a search (``query`` and
        ``search`` as to :meth:`Collection.search`, ``k`` apart) to ``out`` in ``format``;
        ``tag`` tags what was written. See :func:`export` and :class:`ExportOptions`."""
        collection: Collection = self  # type: ignore[assignment]
        check_format(format)
        check_export_k(k)
        built = Query.build(query, **search, k=min(k, MAX_K))
        options: dict[str, Any] = {"link": link, "labels": tuple(labels), "base_url": base_url}
        options |= {"local_files_root": local_files_root}
        if name is not None:
            options["name"] = name
        ExportOptions(**options)  # bad options fail before the search runs
        hits = search_all(collection, built, k)
        return export(hits, format, out, collection=collection, tag=tag, **options)
