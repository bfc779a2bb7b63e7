"""``lookalike labelstudio push|pull`` and ``lookalike cvat push``: the labeling round trip.

The main CLI (:mod:`lookalike.cli`) installs these commands and hands them its helpers
(:class:`CliParts`), so that this module does not import it back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from .cli_query import query_options
from .errors import BadInputError
from .query import Query


@dataclass(frozen=True)
class CliParts:
    """What these commands share with the main CLI."""

    open: Callable[[Path], Any]  # a collection folder -> an open Collection, or a clear error
    out: Console
    err: Console


_parts: CliParts | None = None

labelstudio_app = typer.Typer(
    no_args_is_help=True, help="Send hits to Label Studio as tasks; bring the labels back."
)
cvat_app = typer.Typer(no_args_is_help=True, help="Send hits to CVAT as a task.")


def install(app: typer.Typer, parts: CliParts) -> None:
    """Add ``labelstudio`` and ``cvat`` to the main CLI ``app``."""
    global _parts
    _parts = parts
    app.add_typer(labelstudio_app, name="labelstudio")
    app.add_typer(cvat_app, name="cvat")


def _cli() -> CliParts:
    assert _parts is not None, "install() first"
    return _parts


CollectionArg = Annotated[Path, typer.Argument(help="Collection directory.")]
StudioUrl = Annotated[str, typer.Option("--url", help="Label Studio's URL.")]
ProjectOpt = Annotated[str, typer.Option("--project", help="Label Studio project title.")]
StudioKey = Annotated[
    str | None,
    typer.Option(
        envvar="LABEL_STUDIO_API_KEY",
        show_envvar=True,
        show_default=False,
        help="Label Studio API key (better from the environment: it is never printed).",
    ),
]


def _links(image_server: str | None, name: str | None, root: Path | None, secret: str | None):
    from .integrations.labelstudio import local_file_links, signed_links

    if (image_server is None) == (root is None):
        raise BadInputError(
            "say how Label Studio loads the images: --image-server URL (signed links through "
            "lookalike serve) or --local-files-root DIR (Label Studio's local-files storage)"
        )
    if root is not None:
        return local_file_links(root)
    return signed_links(image_server, name or "", secret)  # type: ignore[arg-type]


@labelstudio_app.command("push")
@query_options(k=100, k_help="How many hits to send.", without=("url",), deferred=True)
def labelstudio_push(
    collection: CollectionArg,
    url: StudioUrl,  # Label Studio's: the query options go without --url
    project: ProjectOpt,
    query: Callable[..., Query],
    relevant_tag: Annotated[
        list[str] | None,
        typer.Option(help="Images with this tag are marked relevant, e.g. label:police_car."),
    ] = None,
    irrelevant_tag: Annotated[
        list[str] | None,
        typer.Option(help="Images with this tag are marked irrelevant, e.g. label:other."),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Comma-separated labels, to make the project.")
    ] = None,
    image_server: Annotated[
        str | None,
        typer.Option(help="lookalike serve's URL as labelers reach it: images by signed links."),
    ] = None,
    server_collection: Annotated[
        str | None,
        typer.Option(help="The collection's name on --image-server [default: its folder name]."),
    ] = None,
    local_files_root: Annotated[
        Path | None,
        typer.Option(help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: local files."),
    ] = None,
    url_secret: Annotated[
        str | None,
        typer.Option(envvar="LOOKALIKE_URL_SECRET", show_default=False, help="Server's secret."),
    ] = None,
    api_key: StudioKey = None,
) -> None:
    """Import a search's hits into a Label Studio project (made from --labels when missing),
    scores as predictions; tag them exported:PROJECT. Hits the project holds are skipped."""
    from .integrations.labelstudio import LabelStudio, check_labels, marks_from_tags, push

    name = server_collection or collection.resolve().name
    links = _links(image_server, name, local_files_root, url_secret)
    with _cli().open(collection) as col, LabelStudio(url, api_key) as studio:
        marks = (
            marks_from_tags(col, relevant_tag, irrelevant_tag)
            if relevant_tag or irrelevant_tag
            else {}
        )
        built = query(  # marked by id and by tag alike
            more_relevant=marks.get("relevant", []), more_irrelevant=marks.get("irrelevant", [])
        )
        report = push(col, studio, project, built, check_labels(labels) if labels else None, links)
    _cli().out.print(
        f"project {report.project_id}: {len(report.imported)} tasks imported, "
        f"{len(report.already)} already there; tagged exported:{project}",
        highlight=False,
        markup=False,
    )


@labelstudio_app.command("pull")
def labelstudio_pull(
    collection: CollectionArg,
    url: StudioUrl,
    project: ProjectOpt,
    target: Annotated[
        str | None,
        typer.Option(help="The label searched for: relevant; others irrelevant [default: first]."),
    ] = None,
    save: Annotated[
        Path | None, typer.Option(help="Write the relevance marks to this JSON file.")
    ] = None,
    api_key: StudioKey = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Tag each labeled image label:CHOICE and print the relevance marks (target label
    relevant, others irrelevant) for the next search. Running it again changes nothing."""
    from .integrations.labelstudio import LabelStudio, pull

    with _cli().open(collection) as col, LabelStudio(url, api_key) as studio:
        report = pull(col, studio, project, target)
    marks = {**report.marks(), "target": report.target}
    if save is not None:
        save.write_text(json.dumps(marks, indent=1) + "\n", encoding="utf-8")
    for item_id in report.missing:
        _cli().err.print(f"warning: image {item_id} was labeled but is no longer in the collection")
    if as_json:
        _cli().out.print_json(data={**marks, "changed": report.changed, "missing": report.missing})
        return
    _cli().out.print(
        f"{len(report.labels)} labeled images: {len(report.relevant)} relevant "
        f"({report.target}), {len(report.irrelevant)} irrelevant; {report.changed} tags changed",
        highlight=False,
        markup=False,
    )


@cvat_app.command("push")
@query_options(k=100, k_help="How many hits to send.")
def cvat_push(
    collection: CollectionArg,
    host: Annotated[str, typer.Option(help="CVAT's URL.")],
    task: Annotated[str, typer.Option(help="Name of the task to make.")],
    labels: Annotated[str, typer.Option(help="Comma-separated labels of the task.")],
    query: Query,
) -> None:
    """Make a CVAT task of a search's hits (files in rank order, label:NAME tags as CVAT
    tags); tag the hits exported:cvat:TASK. Credentials: $CVAT_ACCESS_TOKEN, or
    $CVAT_USERNAME and $CVAT_PASSWORD."""
    import tempfile

    from .integrations.cvat import push
    from .integrations.labelstudio import check_labels

    with tempfile.TemporaryDirectory() as workdir, _cli().open(collection) as col:
        task_id, made = push(col, query, host, task, check_labels(labels), Path(workdir))
    _cli().out.print(f"CVAT task {task_id}: {len(made.ids)} images", highlight=False, markup=False)
