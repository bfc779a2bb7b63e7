"""Label Studio, both ways: push a search's hits as tasks, pull the labels back as tags.

    from lookalike.integrations.labelstudio import LabelStudio, push, pull, signed_links

    ls = LabelStudio("http://localhost:8080")            # token from $LABEL_STUDIO_API_KEY
    links = signed_links("http://lookalike:8000", "photos")  # secret: $LOOKALIKE_URL_SECRET
    push(col, ls, "police cars", Query.build(text="police car", k=200), ["police_car", "other"],
         links)
    marks = pull(col, ls, "police cars")                 # tags label:<choice>; marks.relevant

A push finds or makes the project (an image classification config of the labels), imports
the hits not in it yet as tasks carrying the model's score as a prediction, and tags them
``exported:<project>``, so ``exclude_tags=["exported:<project>"]`` skips them next time.
A pull tags each labeled image ``label:<choice>`` (replacing an older choice) and answers the
relevance marks for the next feedback round: the target label relevant, any other irrelevant.
Both can be run again: nothing is added or changed twice.

Talks to Label Studio's REST API with httpx (its SDK pins clash with ours). The API key is
read from ``$LABEL_STUDIO_API_KEY`` when not given, sent only in a header, never shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import httpx

from ..errors import BadInputError, LookalikeError, NotFoundError
from ..query import Query
from ..signing import DEFAULT_TTL_S, sign_image_url
from ..types import Hit, Item

API_KEY_ENV = "LABEL_STUDIO_API_KEY"
EXPORTED = "exported:{project}"
LABEL = "label:{choice}"
FROM_NAME, TO_NAME = "label", "image"  # the names of the config's Choices and Image tags
PAGE = 100
ImageLinks = Callable[[Item], str]


class LabelStudioError(LookalikeError):
    """Label Studio could not be reached, or refused a request."""


@dataclass
class PushReport:
    """What a push did."""

    project_id: int
    imported: list[int] = field(default_factory=list)  # ids sent as new tasks
    already: list[int] = field(default_factory=list)  # ids the project held already


@dataclass
class PullReport:
    """What a pull found, and the relevance marks it makes."""

    project_id: int
    labels: dict[int, str] = field(default_factory=dict)  # id -> chosen label
    relevant: list[int] = field(default_factory=list)  # labeled with the target label
    irrelevant: list[int] = field(default_factory=list)  # labeled with any other
    changed: int = 0  # tags given or taken by this pull: 0 when run again
    missing: list[int] = field(default_factory=list)  # labeled ids no longer stored
    target: str = ""

    def marks(self) -> dict[str, list[int]]:
        """``{"relevant": [...], "irrelevant": [...]}``, as a search's feedback takes them."""
        return {"relevant": self.relevant, "irrelevant": self.irrelevant}


class LabelStudio:
    """A small client of Label Studio's REST API: projects, tasks, imports."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        key = api_key or os.environ.get(API_KEY_ENV, "")
        if not key:
            raise BadInputError(f"no Label Studio API key: set {API_KEY_ENV} (Account & Settings)")
        if not url.lower().startswith(("http://", "https://")):
            raise BadInputError(f"the Label Studio URL must start with http(s)://: {url!r}")
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._http.headers["authorization"] = self._authorization(key)

    def __repr__(self) -> str:  # never the key
        return f"LabelStudio({self.url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _authorization(self, key: str) -> str:
        """A legacy token goes as it is; a personal access token (a JWT refresh token) is
        exchanged for a short-lived access token first."""
        if key.count(".") != 2:
            return f"Token {key}"
        answer = self._call("POST", "/api/token/refresh", json={"refresh": key})
        return f"Bearer {answer['access']}"

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self._http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise LabelStudioError(f"cannot reach Label Studio at {self.url}: {error}") from None
        if response.status_code in (401, 403):
            raise LabelStudioError(
                f"Label Studio refused the API key ({response.status_code}): check {API_KEY_ENV}"
            )
        if response.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio answered {response.status_code} to {method} {path}: "
                f"{response.text[:300]}"
            )
        return response.json() if response.content else None

    def find_project(self, title: str) -> dict[str, Any] | None:
        """The project titled ``title``, or None."""
        page = 1
        while True:
            answer = self._call("GET", "/api/projects", params={"page": page, "page_size": PAGE})
            projects = answer["results"] if isinstance(answer, dict) else answer
            for project in projects:
                if project.get("title") == title:
                    return project
            if not isinstance(answer, dict) or not answer.get("next"):
                return None
            page += 1

    def ensure_project(self, title: str, labels: Sequence[str] | None) -> dict[str, Any]:
        """The project titled ``title``, made (image classification over ``labels``) when
        missing. An existing project is used as it is."""
        found = self.find_project(title)
        if found is not None:
            return found
        if not labels:
            raise BadInputError(f"no Label Studio project {title!r}: give --labels to make it")
        return self._call(
            "POST", "/api/projects", json={"title": title, "label_config": label_config(labels)}
        )

    def project_labels(self, project: dict[str, Any]) -> list[str]:
        """The choices of a project's labeling config."""
        import xml.etree.ElementTree as ElementTree

        try:
            root = ElementTree.fromstring(project.get("label_config") or "<View/>")
        except ElementTree.ParseError:
            return []
        return [c.get("value", "") for c in root.iter("Choice") if c.get("value")]

    def tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of a project, with its annotations."""
        answer = self._call(
            "GET",
            f"/api/projects/{project_id}/export",
            params={"exportType": "JSON", "download_all_tasks": "true"},
        )
        return list(answer or [])

    def import_tasks(self, project_id: int, tasks: list[dict[str, Any]]) -> None:
        """Add tasks (with their predictions) to a project."""
        for start in range(0, len(tasks), 500):
            self._call(
                "POST", f"/api/projects/{project_id}/import", json=tasks[start : start + 500]
            )


def label_config(labels: Sequence[str]) -> str:
    """Label Studio's config for choosing one of ``labels`` per image."""
    labels = check_labels(labels)
    choices = "".join(f"<Choice value={quoteattr(label)}/>" for label in labels)
    return (
        f'<View><Image name="{TO_NAME}" value="$image"/>'
        f'<Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single" showInline="true">'
        f"{choices}</Choices></View>"
    )


def check_labels(labels: Iterable[str]) -> list[str]:
    """Labels as a list of distinct, non-empty names."""
    if isinstance(labels, str):
        labels = [part.strip() for part in labels.split(",")]
    out = list(dict.fromkeys(label for label in labels if label))
    if len(out) < 2:
        raise BadInputError("give at least two labels, e.g. police_car,other")
    return out


def signed_links(
    server_url: str, collection: str, secret: str | bytes | None = None, ttl_s: int = DEFAULT_TTL_S
) -> ImageLinks:
    """Image links through ``lookalike serve``: signed, expiring, one image each (the secret
    defaults to ``$LOOKALIKE_URL_SECRET``, the one the server was started with)."""
    sign_image_url(server_url, collection, 0, secret, ttl_s=ttl_s)  # fail now on bad input
    return lambda item: sign_image_url(server_url, collection, item.id, secret, ttl_s=ttl_s)


def local_file_links(document_root: str | os.PathLike[str]) -> ImageLinks:
    """Image links through Label Studio's local-files storage, for images on a disk that
    Label Studio shares (its ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``)."""
    root = Path(document_root).resolve()

    def link(item: Item) -> str:
        if not item.path:
            raise BadInputError(f"image {item.id} was indexed from a URL, not a local file")
        try:
            relative = Path(item.path).resolve().relative_to(root)
        except ValueError:
            raise BadInputError(f"{item.path} is not under the document root {root}") from None
        return f"/data/local-files/?d={quote(relative.as_posix())}"

    return link


def task_of(hit: Hit, image_url: str, model_version: str) -> dict[str, Any]:
    """One Label Studio task for a hit: the image link, its id, the score as a prediction."""
    return {
        "data": {"image": image_url, "lookalike_id": hit.id},
        "predictions": [{"model_version": model_version, "score": hit.score, "result": []}],
    }


def push(
    collection: Any,
    studio: LabelStudio,
    project: str,
    query: Query,
    labels: Sequence[str] | None,
    links: ImageLinks,
) -> PushReport:
    """Send the hits of ``query`` that the project lacks as tasks; tag them
    ``exported:<project>``. Running it again adds nothing."""
    found = studio.ensure_project(project, labels)
    hits = collection.search(query)
    held = {_task_id(task) for task in studio.tasks(found["id"])}
    new = [hit for hit in hits if hit.id not in held]
    version = f"lookalike:{collection.model}"
    studio.import_tasks(found["id"], [task_of(hit, links(hit), version) for hit in new])
    sent = [hit.id for hit in new]
    # tagged after the import: a failed import leaves nothing marked exported
    exported = [hit.id for hit in hits]
    if exported:
        collection.tag(exported, EXPORTED.format(project=project))
    return PushReport(found["id"], sent, [hit.id for hit in hits if hit.id in held])


def pull(
    collection: Any, studio: LabelStudio, project: str, target: str | None = None
) -> PullReport:
    """Tag each labeled image ``label:<choice>`` (taking an older ``label:`` of the project
    away) and make the relevance marks: ``target`` (default: the project's first label)
    relevant, any other label irrelevant. Running it again changes nothing."""
    found = studio.find_project(project)
    if found is None:
        raise NotFoundError(f"no Label Studio project {project!r} at {studio.url}")
    choices = studio.project_labels(found)
    target = target or (choices[0] if choices else "")
    if choices and target not in choices:
        raise BadInputError(f"{target!r} is not a label of {project!r}: {', '.join(choices)}")
    report = PullReport(found["id"], target=target)
    for task in studio.tasks(found["id"]):
        choice = _choice(task)
        item_id = _task_id(task)
        if choice is None or item_id is None:
            continue
        report.labels[item_id] = choice
    stored = _stored(collection, list(report.labels))
    report.missing = sorted(set(report.labels) - stored)
    for item_id in report.missing:
        del report.labels[item_id]
    for item_id, choice in sorted(report.labels.items()):
        report.changed += _relabel(collection, item_id, choice, choices)
        (report.relevant if choice == target else report.irrelevant).append(item_id)
    return report


def marks_from_tags(
    collection: Any, relevant: Sequence[str] | None, irrelevant: Sequence[str] | None
) -> dict[str, list[int]]:
    """Relevance marks from tags: the ids holding any ``relevant`` tag (e.g.
    ``label:police_car``), and those holding any ``irrelevant`` one, as a search's
    ``relevant=`` / ``irrelevant=`` take them (relevance feedback)."""
    marks: dict[str, list[int]] = {"relevant": [], "irrelevant": []}
    for key, tags in (("relevant", relevant), ("irrelevant", irrelevant)):
        ids = {i for tag in tags or () for i in collection.tagged(tag)}
        marks[key] = sorted(ids)
    if (relevant or irrelevant) and not (marks["relevant"] or marks["irrelevant"]):
        raise BadInputError(f"no image holds the tags {[*(relevant or ()), *(irrelevant or ())]}")
    return marks


def _relabel(collection: Any, item_id: int, choice: str, choices: Sequence[str]) -> int:
    """Give ``label:<choice>``, take the project's other labels; how many tags changed."""
    held = set(collection.tags(item_id))
    changed = 0
    for other in choices:
        if other != choice and LABEL.format(choice=other) in held:
            changed += collection.untag([item_id], LABEL.format(choice=other))
    if LABEL.format(choice=choice) not in held:
        changed += collection.tag([item_id], LABEL.format(choice=choice))
    return changed


def _stored(collection: Any, ids: list[int]) -> set[int]:
    stored = set()
    for item_id in ids:
        try:
            collection.get(item_id)
        except NotFoundError:
            continue
        stored.add(item_id)
    return stored


def _task_id(task: dict[str, Any]) -> int | None:
    value = (task.get("data") or {}).get("lookalike_id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _choice(task: dict[str, Any]) -> str | None:
    """The label of a task's latest kept annotation (cancelled ones skipped), or None."""
    kept = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    kept.sort(key=lambda a: (a.get("updated_at") or a.get("created_at") or "", a.get("id", 0)))
    for annotation in reversed(kept):
        for region in annotation.get("result") or []:
            picked = (region.get("value") or {}).get("choices") or []
            if region.get("type") == "choices" and picked:
                return str(picked[0])
    return None
