"""CVAT: a search's hits as a CVAT task (images + the labels already given, as tags).

    lookalike cvat push COL --host https://cvat.example --task "police cars 1" \\
        --text "police car" -k 200 --labels police_car,other

makes a task with the labels, uploads the images (in rank order), and imports their
``label:<name>`` tags as CVAT image tags, in CVAT for images 1.1 XML; the hits are then
tagged ``exported:cvat:<task>``. Authentication: ``$CVAT_ACCESS_TOKEN`` (a personal access
token) or ``$CVAT_USERNAME`` / ``$CVAT_PASSWORD``; never printed. Needs ``cvat-sdk``
(``pip install 'lookalike[labeling]'``).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInputError, LookalikeError
from ..types import Item

ANNOTATION_FORMAT = "CVAT 1.1"  # CVAT's name for "CVAT for images 1.1" on import
LABEL_PREFIX = "label:"
EXPORTED = "exported:cvat:{task}"


class CvatError(LookalikeError):
    """CVAT could not be reached, or refused the task."""


@dataclass
class CvatTask:
    """Everything one ``TasksRepo.create_from_data`` call needs."""

    name: str
    labels: list[str]
    resources: list[str]  # image files, in frame order
    ids: list[int]  # lookalike id of each frame
    annotation_path: str
    data_params: dict[str, Any] = field(
        default_factory=lambda: {"image_quality": 95, "sorting_method": "predefined"}
    )
    annotation_format: str = ANNOTATION_FORMAT

    def spec(self) -> dict[str, Any]:
        """The task's ``TaskWriteRequest`` fields."""
        return {"name": self.name, "labels": [{"name": label} for label in self.labels]}


def annotations_xml(
    items: Sequence[Item], labels: Sequence[str], tags_of: Callable[[int], list[str]]
) -> str:
    """CVAT for images 1.1 XML: one ``<image>`` per item (frame ``i``, its file name, size),
    with a ``<tag>`` for each ``label:<name>`` tag whose name is one of ``labels``."""
    root = ElementTree.Element("annotations")
    ElementTree.SubElement(root, "version").text = "1.1"
    meta = ElementTree.SubElement(ElementTree.SubElement(root, "meta"), "task")
    ElementTree.SubElement(meta, "size").text = str(len(items))
    declared = ElementTree.SubElement(meta, "labels")
    for label in labels:
        entry = ElementTree.SubElement(declared, "label")
        ElementTree.SubElement(entry, "name").text = label
        ElementTree.SubElement(entry, "type").text = "tag"
        ElementTree.SubElement(entry, "attributes")
    known = set(labels)
    for frame, item in enumerate(items):
        image = ElementTree.SubElement(
            root,
            "image",
            id=str(frame),
            name=Path(item.locator).name,
            width=str(item.width),
            height=str(item.height),
        )
        for tag in tags_of(item.id):
            name = tag[len(LABEL_PREFIX) :] if tag.startswith(LABEL_PREFIX) else None
            if name in known:
                ElementTree.SubElement(image, "tag", label=name, source="manual")
    ElementTree.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ElementTree.tostring(root, "unicode")


def plan_task(
    collection: Any, hits: Sequence[Item], name: str, labels: Sequence[str], workdir: Path
) -> CvatTask:
    """The task for ``hits``: their files and the XML of their labels, written to
    ``workdir``. CVAT names uploaded frames by file name, so names must be distinct."""
    if not name.strip():
        raise BadInputError("a CVAT task needs a name")
    remote = [h.id for h in hits if not h.path]
    if remote:
        raise BadInputError(
            f"images indexed from URLs cannot be uploaded to CVAT: ids {remote[:10]}"
        )
    twice = [n for n, c in Counter(Path(h.path or "").name for h in hits).items() if c > 1]
    if twice:
        raise BadInputError(
            f"CVAT names frames by file name, and these occur twice: {', '.join(twice[:10])}"
        )
    xml = workdir / "annotations.xml"
    xml.write_text(annotations_xml(hits, labels, collection.tags), encoding="utf-8")
    return CvatTask(
        name, list(labels), [h.path or "" for h in hits], [h.id for h in hits], str(xml)
    )


def create_task(task: CvatTask, host: str) -> int:
    """Create the task on a CVAT server through ``cvat-sdk``; returns its id."""
    from cvat_sdk import make_client, models
    from cvat_sdk.core.proxies.tasks import ResourceType

    token = os.environ.get("CVAT_ACCESS_TOKEN")
    user, password = os.environ.get("CVAT_USERNAME"), os.environ.get("CVAT_PASSWORD")
    if not token and not (user and password):
        raise BadInputError("set CVAT_ACCESS_TOKEN, or CVAT_USERNAME and CVAT_PASSWORD")
    login: dict[str, Any] = {"access_token": token} if token else {"credentials": (user, password)}
    spec = models.TaskWriteRequest(
        name=task.name, labels=[models.PatchedLabelRequest(name=n) for n in task.labels]
    )
    try:
        with make_client(host, **login) as client:
            created = client.tasks.create_from_data(
                spec=spec,
                resources=task.resources,
                resource_type=ResourceType.LOCAL,
                data_params=task.data_params,
                annotation_path=task.annotation_path,
                annotation_format=task.annotation_format,
            )
            return int(created.id)
    except Exception as error:  # the SDK's own, urllib3's and OS errors: one clear line
        raise CvatError(f"CVAT at {host} failed: {type(error).__name__}: {error}") from None


def push(
    collection: Any, query: Any, host: str, name: str, labels: Sequence[str], workdir: Path
) -> tuple[int, CvatTask]:
    """Search, make the task on CVAT, and tag the hits ``exported:cvat:<task>``."""
    hits = collection.search(query)
    task = plan_task(collection, hits, name, labels, workdir)
    task_id = create_task(task, host)
    if task.ids:
        collection.tag(task.ids, EXPORTED.format(task=name))
    return task_id, task
