"""Curation routes: tags on images, and exports of a search streamed as JSON lines or CSV."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi import Query as QueryParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..errors import BadInputError
from ..export import DEFAULT_EXPORT_K, STREAM_FORMATS, check_export_k, lines, records, search_all
from ..query import MAX_K, Query
from ..tags import check_tag
from .bodies import read_json
from .schemas import (
    TagBody,
    TagCountsResponse,
    TaggedIdsResponse,
    TaggedResponse,
    UntaggedResponse,
)
from .served import Served

MEDIA_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
EXPORT_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "allOf": [{"$ref": "#/components/schemas/SearchBody"}],
                "properties": {
                    "format": {"type": "string", "enum": list(STREAM_FORMATS)},
                    "tag": {"type": "string", "description": "tag the exported images"},
                    "k": {"type": "integer", "minimum": 1},
                },
            }
        }
    },
}


def router(served: Served) -> APIRouter:
    """The tag and export routes over the served collections."""
    api = APIRouter()

    @api.post("/v1/collections/{name}/tags", response_model=TaggedResponse)
    def tag(name: str, body: TagBody) -> TaggedResponse:
        """Give images a tag; unknown ids fail the whole call (404), tagging nothing."""
        return TaggedResponse(tagged=served[name].tag(body.ids, check_tag(body.tag)))

    @api.delete("/v1/collections/{name}/tags", response_model=UntaggedResponse)
    def untag(name: str, body: TagBody) -> UntaggedResponse:
        """Take a tag from images (the same body as tagging)."""
        return UntaggedResponse(untagged=served[name].untag(body.ids, check_tag(body.tag)))

    @api.post("/v1/collections/{name}/untag", response_model=UntaggedResponse)
    def untag_post(name: str, body: TagBody) -> UntaggedResponse:
        """Take a tag from images, for clients that cannot send a body with DELETE."""
        return untag(name, body)

    @api.get("/v1/collections/{name}/tags", response_model=TagCountsResponse)
    def tag_counts(name: str) -> TagCountsResponse:
        """Every tag in use and how many images hold it."""
        return TagCountsResponse(tags=served[name].tag_counts())

    @api.get("/v1/collections/{name}/tagged", response_model=TaggedIdsResponse)
    def tagged(name: str, tag: str = QueryParam(..., max_length=200)) -> TaggedIdsResponse:
        """Ids of the images holding ``tag``."""
        return TaggedIdsResponse(tag=tag, ids=served[name].tagged(check_tag(tag)))

    @api.post(
        "/v1/collections/{name}/export",
        response_class=StreamingResponse,
        responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}},
        openapi_extra={"requestBody": EXPORT_REQUEST_BODY},
    )
    async def export(name: str, request: Request) -> StreamingResponse:
        """Stream the best ``k`` results of a search (a search body plus ``format``,
        ``jsonl`` or ``csv``, and ``tag``), up to the server's ``max_export_k``, as they
        are found; with ``tag``, the images sent are tagged once the last one is sent."""
        collection = served[name]
        body = await read_json(request)
        if not isinstance(body, dict):
            raise BadInputError("an export body must be a JSON object")
        limit = served.settings.max_export_k
        format, tag = body.pop("format", "jsonl"), body.pop("tag", None)
        k = body.pop("k", min(DEFAULT_EXPORT_K, limit))
        if format not in STREAM_FORMATS:
            raise BadInputError(f"format must be one of {', '.join(STREAM_FORMATS)}")
        if isinstance(k, int) and not isinstance(k, bool) and k > limit:
            raise BadInputError(f"an export's k must be at most {limit} on this server")
        check_export_k(k)
        if tag is not None:
            check_tag(tag)
        query = Query.build(served.query({**body, "k": 1}), k=min(k, MAX_K))
        # the query is embedded here, so a bad one fails with its status before any byte
        hits = await run_in_threadpool(search_all, collection, query, k)
        return StreamingResponse(
            _stream(collection, hits, format, tag), media_type=MEDIA_TYPES[format]
        )

    return api


def _stream(collection: Any, hits: Iterator[Any], format: str, tag: str | None) -> Iterator[str]:
    sent: list[int] = []

    def counted() -> Iterator[Any]:
        for record in records(hits, collection):
            sent.append(record.hit.id)
            yield record

    yield from lines(counted(), format)
    if tag is not None and sent:
        collection.tag(sent, tag)
