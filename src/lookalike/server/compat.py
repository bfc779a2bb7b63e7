"""clip-retrieval's back-end API (/knn-service, /metadata, /indices-list), so clients and
front ends written for it work unchanged. Its safety, violence, aesthetic and mclip flags
are accepted and ignored; ``modality`` is ignored too (lookalike indexes images only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from ..errors import BadInputError
from .bodies import decode_base64, links, read_json
from .schemas import KnnServiceBody, MetadataBody
from .served import Served

DEDUPE_COSINE = 0.94  # clip-retrieval's own threshold


def json_body(schema: str) -> dict[str, Any]:
    """OpenAPI request body: JSON of a schema the app adds to its components."""
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def router(served: Served) -> APIRouter:
    """Routes answering clip-retrieval's requests from ``served`` collections."""
    api = APIRouter(tags=["clip-retrieval compatibility"])

    def pick(name: str | None) -> tuple[str, Any]:
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
    async def knn_service(request: Request) -> list[dict[str, Any]]:
        """Nearest images to a text, base64 image, image URL or embedding."""
        body = KnnServiceBody.model_validate(await read_json(request))
        name, collection = pick(body.indice_name)
        query: dict[str, Any] = {}
        if body.text:
            query["text"] = body.text
        elif body.image:
            query["image"] = decode_base64(body.image)
        elif body.image_url:
            query["url"] = body.image_url
        elif body.embedding_input is not None:
            query["vector"] = body.embedding_input
        else:
            raise BadInputError("give text, image, image_url or embedding_input")
        k = min(body.num_images, body.num_result_ids or body.num_images)
        dedupe = DEDUPE_COSINE if body.deduplicate else None
        run = served.url_work.run if "url" in query else run_in_threadpool
        hits = await run(collection.search, served.query({"k": k, "dedupe": dedupe}, **query))
        return [_knn_result(name, hit) for hit in hits]

    @api.post(
        "/metadata",
        response_model=list[dict[str, Any]],
        openapi_extra={"requestBody": json_body("MetadataBody")},
    )
    async def metadata(request: Request) -> list[dict[str, Any]]:
        """Metadata of ids, in clip-retrieval's shape: [{"id", "metadata"}]."""
        body = MetadataBody.model_validate(await read_json(request))
        name, collection = pick(body.indice_name)
        answers = []
        for item_id in body.ids:
            try:
                item = collection.get(item_id)
            except KeyError:
                continue
            url, _ = links(name, item)
            answers.append({"id": item_id, "metadata": {**item.metadata, "url": url}})
        return answers

    return api


def _knn_result(name: str, hit: Any) -> dict[str, Any]:
    url, thumbnail = links(name, hit)
    caption = hit.metadata.get("caption")
    return {
        **hit.metadata,
        "id": hit.id,
        "similarity": hit.score,
        "url": url,
        "caption": caption,
        "thumbnail_url": thumbnail,
    }
