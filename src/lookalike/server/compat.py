"""clip-retrieval's back-end API (/knn-service, /metadata, /indices-list), so clients and
front ends written for it work unchanged. Its safety, violence, aesthetic and mclip flags
are accepted and ignored; ``modality`` is ignored too (lookalike indexes images only).

Answers follow clip-retrieval's back end (``clip_back.py``) where its front end depends on
them: links are absolute, ``caption`` is left out when an image has none, up to
``num_result_ids`` ids come back (the first ``num_images`` with their metadata), and a request
that cannot be answered gets an empty list (its front end takes any answer for a list), with
the reason logged and in the ``X-Lookalike-Error`` header."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..errors import BadInputError, LookalikeError, NotFoundError
from ..fetch import is_url
from ..query import MAX_K, Query, decode_base64
from ..types import Hit, Item
from .bodies import links, read_json
from .files import local_image_path
from .schemas import KnnServiceBody, MetadataBody
from .served import Served
from .settings import ServerSettings

if TYPE_CHECKING:
    from ..collection import Collection

log = logging.getLogger("lookalike.server.compat")

DEDUPE_COSINE = 0.94  # clip-retrieval's own threshold
ERROR_HEADER = "x-lookalike-error"
ITEM_LINK = re.compile(
    r"/v1/collections/(?P<name>[^/?#]+)/items/(?P<id>\d{1,18})/(image|thumbnail)"
)


def json_body(schema: str) -> dict[str, Any]:
    """OpenAPI request body: JSON of a schema the app adds to its components."""
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def public_base(request: Request, settings: ServerSettings) -> str:
    """This server's base URL as clients reach it, without a trailing slash: the configured
    public URL (behind a proxy), else the request's own."""
    return (settings.public_url or str(request.base_url)).rstrip("/")


def router(served: Served) -> APIRouter:
    """Routes answering clip-retrieval's requests from ``served`` collections."""
    api = APIRouter(tags=["clip-retrieval compatibility"])

    def pick(name: str | None) -> tuple[str, Collection]:
        if name is None:
            if len(served.collections) != 1:
                raise BadInputError("indice_name is required when several collections are served")
            name = next(iter(served.collections))
        return name, served[name]

    @api.get("/indices-list", response_model=list[str])
    def indices_list() -> list[str]:
        """Names of the served collections."""
        return list(served.collections)

    @api.post(
        "/knn-service",
        response_model=list[dict[str, Any]],
        openapi_extra={"requestBody": json_body("KnnServiceBody")},
    )
    async def knn_service(request: Request) -> Any:
        """Nearest images to a text, base64 image, image URL or embedding: up to
        ``num_result_ids`` (at most 10,000), the first ``num_images`` with their metadata, the
        rest as id and similarity (ask ``/metadata`` for them). A request that cannot be
        answered gets ``[]``, as from clip-retrieval; the reason is logged and in the
        ``X-Lookalike-Error`` header."""
        base = public_base(request, served.settings)
        try:
            body = KnnServiceBody.model_validate(await read_json(request))
            name, collection = pick(body.indice_name)
            k = min(body.num_result_ids or body.num_images, MAX_K)  # capped silently
            dedupe = DEDUPE_COSINE if body.deduplicate else None

            def run() -> list[Hit]:  # off the event loop: reading a stored image too
                query = _query(body, served, name, base)
                return collection.search(
                    Query.build(**query, k=k, include_self=True, dedupe=dedupe)
                )

            # an image URL may be fetched: on the URL threads, never the searches'
            hits = await (served.url_work.run if body.image_url else run_in_threadpool)(run)
        except (LookalikeError, ValidationError) as error:
            return _no_results("/knn-service", error)
        describe = _describer(name, base, served.settings)
        return [
            {**describe(hit), "id": hit.id, "similarity": hit.score}
            if rank < body.num_images
            else {"id": hit.id, "similarity": hit.score}
            for rank, hit in enumerate(hits)
        ]

    @api.post(
        "/metadata",
        response_model=list[dict[str, Any]],
        openapi_extra={"requestBody": json_body("MetadataBody")},
    )
    async def metadata(request: Request) -> Any:
        """Metadata of ids, in clip-retrieval's shape: [{"id", "metadata"}]; unknown ids are
        left out, and a request that cannot be answered gets ``[]``."""
        base = public_base(request, served.settings)
        try:
            body = MetadataBody.model_validate(await read_json(request))
            name, collection = pick(body.indice_name)
            items = await run_in_threadpool(_live_items, collection, body.ids)
        except (LookalikeError, ValidationError) as error:
            return _no_results("/metadata", error)
        describe = _describer(name, base, served.settings)
        return [{"id": item.id, "metadata": describe(item)} for item in items]

    return api


def _query(body: KnnServiceBody, served: Served, name: str, base: str) -> dict[str, Any]:
    """The search arguments for a /knn-service request."""
    if body.text:
        return {"text": body.text}
    if body.image:
        return {"image": decode_base64(body.image)}
    if body.image_url:
        return _url_query(body.image_url, served, name, base)
    if body.embedding_input is not None:
        return {"vector": body.embedding_input}
    raise BadInputError("give text, image, image_url or embedding_input")


def _url_query(url: str, served: Served, name: str, base: str) -> dict[str, Any]:
    """A query for an image URL. A link to one of this server's own images ("search by this
    image" in clip-retrieval's front end) or the URL of an image stored in the collection is
    answered from what is stored, without fetching anything over HTTP."""
    own = _own_item(url, base)
    if own is not None:
        source_name, item_id = own
        if source_name == name:
            return {"id": item_id}
        source = served[source_name]
        item = source.get(item_id)
        if item.url is None:  # a file of another served collection
            return {"image": local_image_path(source, item_id).read_bytes()}
        url = item.url
    stored = served[name].lookup(url) if is_url(url) else None
    return {"id": stored.id} if stored is not None else {"url": url}


def _own_item(url: str, base: str) -> tuple[str, int] | None:
    """(collection name, id) when ``url`` links to an image or thumbnail this server serves,
    absolute (under ``base``) or relative."""
    path = url[len(base) :] if url.startswith(base + "/") else url
    found = ITEM_LINK.fullmatch(path)
    return (unquote(found["name"]), int(found["id"])) if found else None


def _live_items(collection: Collection, ids: list[int]) -> list[Item]:
    items = []
    for item_id in ids:
        try:
            items.append(collection.get(item_id))
        except NotFoundError:  # unknown or removed: left out
            continue
    return items


def _describer(name: str, base: str, settings: ServerSettings) -> Callable[[Item], dict[str, Any]]:
    """A function giving an item's fields as clip-retrieval shows them: its metadata, absolute
    ``url`` and ``thumbnail_url``, and ``caption`` (from the collection's caption column) only
    when it has one: clip-retrieval's front end reads the length of any caption it is given."""
    column = settings.caption_column(name)

    def describe(item: Item) -> dict[str, Any]:
        url, thumbnail = (_absolute(link, base) for link in links(name, item))
        fields = {key: value for key, value in item.metadata.items() if key != "caption"}
        caption = item.metadata.get(column)
        if caption is not None:
            fields["caption"] = caption if isinstance(caption, str) else str(caption)
        fields["url"] = url
        fields["thumbnail_url"] = thumbnail
        return fields

    return describe


def _absolute(link: str, base: str) -> str:
    return base + link if link.startswith("/") else link


def _no_results(route: str, error: LookalikeError | ValidationError) -> JSONResponse:
    """clip-retrieval's answer to a request it cannot serve: an empty list (its front end
    assigns any answer to its result list). The reason goes to the log and a header."""
    if isinstance(error, ValidationError):
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in error.errors()[:3]
        ]
        reason = "invalid_body: " + "; ".join(problems)
    else:
        reason = f"{error.code}: {error}"
    log.warning("%s answered no results: %s", route, reason)
    printable = " ".join(reason.encode("ascii", "replace").decode().split())[:300]
    return JSONResponse([], headers={ERROR_HEADER: printable})
