"""The FastAPI app: routes that translate HTTP to :class:`lookalike.Collection` calls."""

from __future__ import annotations

import functools
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi import Path as FastAPIPath
from fastapi import Query as QueryParam
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from .._version import __version__
from ..collection import Collection
from ..errors import BadInputError, BusyError, ImageError, InvalidQueryError
from ..fetch import is_url
from ..imaging import ImageLimits, check_image
from ..query import OPTIONS, Query
from ..types import Hit, Item
from . import clip_front, compat, curation, errors, fastjson, signed
from .bodies import item_name, links, parse_json, read_json, relative_path
from .files import local_image_path, thumbnail, thumbnail_path
from .guards import Guard
from .metrics import Metrics
from .schemas import (
    AddResponse,
    AddUrlsBody,
    CollectionBody,
    CollectionsResponse,
    CountBody,
    CountResponse,
    DeleteResponse,
    DuplicateGroupBody,
    DuplicatesBody,
    DuplicatesResponse,
    FailedBody,
    HealthResponse,
    HitBody,
    ItemBody,
    KnnServiceBody,
    MetadataBody,
    SearchBatchBody,
    SearchBatchResponse,
    SearchBody,
    SearchResponse,
)
from .served import Served
from .settings import ServerSettings

WEB = resources.files("lookalike") / "web"
ItemId = Annotated[int, FastAPIPath(ge=0, le=2**63 - 1, description="an image id")]
SIGNED_DOC = "a signed link's token: checked, with expires, before the route runs"
SEARCH_FORM_FIELDS = tuple(sorted(OPTIONS - {"model"}))
FORM_NUMBERS: dict[str, Any] = {"k": int, "dedupe": float, "diverse": float}
FORM_TEXT = {"model"}


def create_app(
    collections: Mapping[str, Collection],
    settings: ServerSettings | None = None,
    *,
    load_models: bool = True,
) -> FastAPI:
    """An app serving ``collections`` (name -> open Collection)."""
    settings = settings or ServerSettings()
    if settings.url_secret is None:  # signed links then last as long as this server runs
        settings = replace(settings, url_secret=secrets.token_urlsafe(32))
    served = Served(collections, settings)
    settings.check_caption_columns(served.collections)
    if load_models:
        for collection in served.collections.values():
            _ = collection.encoder  # load once at start, not on the first request
            getattr(collection.encoder, "warm_up", lambda: None)()  # exported towers open lazily
    app = FastAPI(
        title="lookalike",
        version=__version__,
        description="Find the images of a collection that look like a query.",
        responses=errors.ERROR_RESPONSES,
    )
    app.state.served = served
    metrics = Metrics()
    errors.install(app)
    app.include_router(_api(served, metrics))
    app.include_router(compat.router(served))
    app.include_router(curation.router(served))
    app.include_router(signed.router(served))
    if settings.clip_front:
        clip_front.mount(app, served)
    app.mount("/static", StaticFiles(directory=str(WEB)), name="static")
    app.add_middleware(Guard, settings=settings, metrics=metrics)
    if settings.cors_origins:  # outside the guard: preflights carry no key, errors need headers
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["authorization", "x-api-key", "content-type"],
        )
    _document_bodies(app, list(served.collections))
    return app


def _api(served: Served, metrics: Metrics) -> APIRouter:
    api = APIRouter()

    @api.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((WEB / "index.html").read_text(encoding="utf-8"))

    @api.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        """Liveness: answers while the server runs."""
        return HealthResponse(status="ok", collections=len(served.collections))

    @api.get("/metrics", response_class=PlainTextResponse)
    def prometheus() -> str:
        """Request counts and latencies, and collection sizes, in Prometheus' text format."""
        sizes = {name: float(len(c)) for name, c in served.collections.items()}
        return metrics.render({"lookalike_collection_images": sizes})

    @api.get("/v1/collections", response_model=CollectionsResponse)
    def list_collections() -> CollectionsResponse:
        """Names, sizes and models of the served collections."""
        return CollectionsResponse(
            collections=[
                CollectionBody(
                    name=name,
                    count=len(c),
                    model=c.model,
                    dim=c.dim,
                    index=c.backend.index_kind,
                    supports_text=c.encoder.supports_text,
                )
                for name, c in served.collections.items()
            ]
        )

    @api.post(
        "/v1/collections/{name}/search",
        response_model=SearchResponse,
        openapi_extra={"requestBody": _SEARCH_REQUEST_BODY},
    )
    async def search(name: str, request: Request) -> Response:
        """Search by exactly one of text, image (base64), url, id, vector or weighted query
        parts (JSON body), or by an uploaded image (multipart field ``image``)."""
        collection = served[name]
        query = await _search_query(request, served)
        started = time.perf_counter()
        run = served.url_work.run if query.fetches else run_in_threadpool
        hits = await run(collection.search, query)
        roots = served.path_roots(name)
        results = [_hit_json(name, h, roots) for h in hits]
        return _search_answer(SearchResponse, results, started, collection)

    @api.post(
        "/v1/collections/{name}/search/batch",
        response_model=SearchBatchResponse,
        openapi_extra={"requestBody": _SEARCH_BATCH_REQUEST_BODY},
    )
    async def search_batch(name: str, request: Request) -> Response:
        """Several searches (JSON bodies, no URLs) in one request and one batched pass
        through the index; their results in the order of the searches."""
        collection = served[name]
        queries = served.queries(await read_json(request))
        started = time.perf_counter()
        found = await run_in_threadpool(collection.search_many, queries)
        roots = served.path_roots(name)
        results = [[_hit_json(name, h, roots) for h in hits] for hits in found]
        return _search_answer(SearchBatchResponse, results, started, collection)

    @api.post(
        "/v1/collections/{name}/count",
        response_model=CountResponse,
        openapi_extra={"requestBody": _COUNT_REQUEST_BODY},
    )
    async def count(name: str, request: Request) -> CountResponse:
        """How many images score at least ``min_score`` for a search body: exact up to a
        size, else estimated from a sample with a 95 % interval."""
        collection = served[name]
        body = await read_json(request)
        if not isinstance(body, Mapping) or "min_score" not in body:
            raise InvalidQueryError("a count body is a search body with min_score (-1 to 1)")
        body = dict(body)
        min_score = body.pop("min_score")
        query = served.query(body)
        started = time.perf_counter()
        run = served.url_work.run if query.fetches else run_in_threadpool
        counted = await run(functools.partial(collection.count, query, min_score=min_score))
        return CountResponse(**counted.to_dict(), took_ms=_took_ms(started))

    @api.get("/v1/collections/{name}/items/{item_id}", response_model=ItemBody)
    def get_item(name: str, item_id: ItemId) -> ItemBody:
        """One stored image's size, metadata, tags and links."""
        body = _item_body(name, served[name].get(item_id), served.path_roots(name))
        return body.model_copy(update={"tags": served[name].tags(item_id)})

    @api.get(
        "/v1/collections/{name}/items/{item_id}/image",
        response_class=FileResponse,
        responses={200: {"content": {"image/*": {}}}, 307: {"description": "remote image"}},
    )
    def get_image(
        name: str,
        item_id: ItemId,
        token: Annotated[str | None, QueryParam(description=SIGNED_DOC)] = None,
        expires: Annotated[
            int | None, QueryParam(description="Unix time a signed link ends")
        ] = None,
    ) -> Any:
        """The full image: the file itself, or a redirect to its URL. With a signed link's
        ``token`` and ``expires`` (``POST .../signed-urls``), no API key is needed."""
        collection = served[name]
        item = collection.get(item_id)
        if item.url:
            return RedirectResponse(item.url, status_code=307)
        path = local_image_path(collection, item_id)
        return FileResponse(path, media_type=_media_type(path))

    @api.get(
        "/v1/collections/{name}/items/{item_id}/thumbnail",
        response_class=FileResponse,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def get_thumbnail(name: str, item_id: ItemId) -> FileResponse:
        """A JPEG thumbnail, made on first request and cached."""
        collection, side = served[name], served.settings.thumbnail_side
        item = await run_in_threadpool(collection.get, item_id)  # 404 for unknown ids
        path = thumbnail_path(collection, item_id, side)
        if not path.is_file():  # made now: fetched first if the image is stored by URL
            run = served.url_work.run if item.url else run_in_threadpool
            path = await run(thumbnail, collection, item_id, side)
        return FileResponse(
            path, media_type="image/jpeg", headers={"cache-control": "public, max-age=86400"}
        )

    @api.post(
        "/v1/collections/{name}/items",
        response_model=AddResponse,
        openapi_extra={"requestBody": _ADD_REQUEST_BODY},
    )
    async def add_items(name: str, request: Request) -> AddResponse:
        """Add images: uploaded files (multipart field ``files``, optional ``metadata``, a JSON
        list) or URLs (JSON body ``{"urls": [...], "metadata": [...]}``)."""
        collection = served[name]
        images, metadata = await _add_body(request, collection.limits)
        fetches = any(isinstance(image, str) for image in images)  # URLs, not uploads
        run = served.url_work.run if fetches else run_in_threadpool
        report = await run(functools.partial(collection.add_images, images, metadata=metadata))
        roots = served.path_roots(name)
        return AddResponse(
            added=report.added,
            unchanged=report.unchanged,
            duplicates=report.duplicates,
            ids=report.ids,
            items=[_item_body(name, collection.get(i), roots) for i in report.ids],
            failed=[FailedBody(source=s, reason=r) for s, r in report.failed],
        )

    @api.delete("/v1/collections/{name}/items/{item_id}", response_model=DeleteResponse)
    def delete_item(name: str, item_id: ItemId) -> DeleteResponse:
        """Remove an image; it never comes back in results."""
        collection = served[name]
        collection.get(item_id)
        return DeleteResponse(removed=collection.remove(ids=[item_id]))

    passes = threading.Lock()  # one duplicates pass at a time: each reads every vector

    @api.get("/v1/collections/{name}/duplicates", response_model=DuplicatesResponse)
    async def get_duplicates(
        name: str,
        threshold: Annotated[float, QueryParam(gt=0, le=1)] = 0.95,
        exact: bool = False,
    ) -> DuplicatesResponse:
        """Groups of copies across the collection, each with a suggested keeper (the image
        with the most pixels, then bytes, then the lowest id). A full pass over the
        collection: minutes at millions of images."""
        body = DuplicatesBody(threshold=threshold, exact=exact)
        return await _duplicates(served[name], body, passes)

    @api.post(
        "/v1/collections/{name}/duplicates",
        response_model=DuplicatesResponse,
        openapi_extra={"requestBody": _DUPLICATES_REQUEST_BODY},
    )
    async def post_duplicates(name: str, request: Request) -> DuplicatesResponse:
        """As GET, with the options in a JSON body (which may be empty)."""
        collection = served[name]
        raw = await request.body()
        body = DuplicatesBody.model_validate(parse_json(raw, "the body") if raw.strip() else {})
        return await _duplicates(collection, body, passes)

    return api


async def _duplicates(
    collection: Collection, body: DuplicatesBody, passes: threading.Lock
) -> DuplicatesResponse:
    """One duplicates pass, or 503 busy while another runs (minutes at millions of images)."""
    if not passes.acquire(blocking=False):
        raise BusyError("a duplicates pass is running on this server; try again when it ends")
    try:
        started = time.perf_counter()
        groups = await run_in_threadpool(
            functools.partial(collection.duplicates, body.threshold, exact=body.exact)
        )
    finally:
        passes.release()
    return DuplicatesResponse(
        groups=[DuplicateGroupBody(**g.to_dict()) for g in groups],
        threshold=body.threshold,
        exact=body.exact,
        took_ms=_took_ms(started),
    )


async def _search_query(request: Request, served: Served) -> Query:
    """The search of a JSON body, or of a multipart upload (field ``image``, options as
    form fields); the upload's bytes go to the search as they are, decoded once there."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        return served.query(await read_json(request))
    form = await request.form(max_files=1, max_fields=20)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise BadInputError("a multipart search needs an image file in the field 'image'")
    fields: dict[str, Any] = {}
    for field in SEARCH_FORM_FIELDS:
        value = form.get(field)
        if isinstance(value, str) and value != "":
            fields[field] = _form_value(field, value)
    return served.query(fields, image=await upload.read())


async def _add_body(
    request: Request, limits: ImageLimits
) -> tuple[list[Any], list[dict[str, Any]] | None]:
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=1000, max_fields=10)
        files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
        if not files:
            raise BadInputError("upload images in the multipart field 'files'")
        images = [await f.read() for f in files]
        names = [f.filename or "upload" for f in files]
        # decoding takes up to a second an image: on the event loop it would stall every request
        await run_in_threadpool(_require_images, images, names, limits)
        raw = form.get("metadata")
        metadata = _form_value("metadata", raw) if isinstance(raw, str) and raw else None
        if metadata is not None and not (
            isinstance(metadata, list) and all(isinstance(m, dict) for m in metadata)
        ):
            raise BadInputError("metadata must be a JSON list of objects, one per file")
        return images, metadata
    body = AddUrlsBody.model_validate(await read_json(request))
    # only http(s): a path here would let any client index the server's own files
    refused = [url for url in body.urls if not is_url(url)]
    if refused:
        raise BadInputError(f"urls must be http(s) URLs; refused {refused[0][:200]!r}")
    return list(body.urls), body.metadata


def _require_images(images: list[bytes], names: list[str], limits: ImageLimits) -> None:
    """Refuse an upload that is no image, naming the file, from its headers alone: the one
    decode of its pixels is the ingest's."""
    for data, name in zip(images, names, strict=True):
        try:
            check_image(data, limits=limits)
        except ImageError as error:
            raise ImageError(f"{name}: {error}") from None


def _form_value(field: str, value: str) -> Any:
    """A form field's value: numbers and flags parsed, text as it is, and JSON for the
    structured fields (lists and objects: filter, exclude_ids, tags, metadata, ...)."""
    if field in FORM_TEXT:
        return value
    if field == "include_self":
        return value.lower() in {"1", "true", "on", "yes"}
    if field in FORM_NUMBERS:
        try:
            return FORM_NUMBERS[field](value)
        except ValueError:
            raise BadInputError(f"form field {field!r} is not a number: {value[:40]!r}") from None
    return parse_json(value, f"form field {field!r}")


def _item_body(name: str, item: Item, roots: list[str] | None = None) -> ItemBody:
    return ItemBody(**_public_fields(name, item, roots))


def _hit_body(name: str, hit: Hit, roots: list[str] | None = None) -> HitBody:
    return HitBody(**_hit_json(name, hit, roots))


def _hit_json(name: str, hit: Hit, roots: list[str] | None = None) -> dict[str, Any]:
    """A hit as its :class:`HitBody` JSON holds it, fields in the same order."""
    return {"id": hit.id, "score": hit.score, **_public_fields(name, hit, roots)}


def _search_answer(
    model: type[BaseModel], results: list[Any], started: float, collection: Collection
) -> Response:
    """A search route's answer: its results (hits as JSON), the time since ``started``."""
    content = {"results": results, "took_ms": _took_ms(started), "model": collection.model}
    return _json_answer(model, content)


def _took_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()``), as answers report them."""
    return round((time.perf_counter() - started) * 1000, 3)


def _json_answer(model: type[BaseModel], content: dict[str, Any]) -> Response:
    """``content`` as JSON, written straight from plain values: what ``model`` (the route's
    documented response_model) would write, without validating and copying every field of
    an answer that the library built and typed. Values plain JSON cannot hold go through
    ``model`` as before."""
    try:
        body = fastjson.dumps(content)
    except (TypeError, ValueError):
        body = model.model_validate(content).model_dump_json().encode()
    return Response(body, media_type="application/json")


def _public_fields(name: str, item: Item, roots: list[str] | None = None) -> dict[str, Any]:
    """What the API shows of a stored image: links instead of server paths, its file name,
    and its path relative to the indexed folder when ``roots`` are given (paths shown)."""
    url, thumb = links(name, item)
    return {
        "id": item.id,
        "url": url,
        "thumbnail_url": thumb,
        "name": item_name(item),
        "path": relative_path(item, roots) if roots is not None else None,
        "width": item.width,
        "height": item.height,
        "metadata": item.metadata,
    }


def _media_type(path: Any) -> str:
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except Exception:  # unreadable now: let the client sniff
        return "application/octet-stream"


_SEARCH_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/SearchBody"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": {"type": "string", "format": "binary"},
                    "k": {"type": "integer", "minimum": 1},
                    "filter": {"type": "string", "description": "JSON object"},
                    "exclude_ids": {"type": "string", "description": "JSON list"},
                    "include_self": {"type": "boolean"},
                    "dedupe": {"type": "number"},
                    "tags": {"type": "string", "description": "JSON list"},
                    "exclude_tags": {"type": "string", "description": "JSON list"},
                },
            }
        },
    },
}
_SEARCH_BATCH_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SearchBatchBody"}}},
}
_COUNT_REQUEST_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/CountBody"}}},
}
_ADD_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/AddUrlsBody"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "metadata": {"type": "string", "description": "JSON list of objects"},
                },
            }
        },
    },
}

_DUPLICATES_REQUEST_BODY = {
    "required": False,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DuplicatesBody"}}},
}


def _document_bodies(app: FastAPI, names: list[str]) -> None:
    """Complete the generated spec: the bodies parsed by hand (JSON or multipart) join its
    schemas, and collection names are listed where a path takes one."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = generate()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for model in (
                SearchBody,
                SearchBatchBody,
                CountBody,
                AddUrlsBody,
                KnnServiceBody,
                MetadataBody,
                DuplicatesBody,
            ):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        if parameter.get("name") == "name" and parameter.get("in") == "path":
                            parameter["schema"] = {"type": "string", "enum": names}
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
