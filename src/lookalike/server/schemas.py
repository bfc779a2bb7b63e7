"""Request and response bodies of the HTTP API, typed so the OpenAPI spec is complete."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..query import MAX_MARKS, MAX_PARTS

MetadataValue = str | int | float | bool | None
NAME_DOC = "the image's file name, or the last segment of its URL"
PATH_DOC = (
    "its file's path relative to the folder it was indexed from, where the server shows "
    "paths (lookalike serve --show-paths); else null"
)


def _not_a_boolean(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would take true for 1
        raise ValueError("an id must be an integer, not a boolean")
    return value


ImageId = Annotated[int, BeforeValidator(_not_a_boolean)]
TagName = Annotated[
    str, Field(min_length=1, max_length=200, description="printable text, no control characters")
]


class QueryKinds(BaseModel):
    """The query kinds a search or a query part may hold."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, max_length=2000)
    image: str | None = Field(None, description="base64-encoded image bytes")
    url: str | None = Field(None, max_length=8192)
    id: ImageId | None = None
    vector: list[float] | None = Field(None, max_length=65536)


class QueryPartBody(QueryKinds):
    """One weighted part of a mixed query: exactly one of the query kinds (see SearchBody)."""

    weight: float = Field(1.0, ge=-100, le=100)


class SearchBody(QueryKinds):
    """A search: one or more of text, image, url, id, vector, and query (weighted parts),
    which combine; plus options. The schema of :class:`lookalike.Query`'s JSON form, which
    is what validates a request (tests keep the two in step)."""

    query: list[QueryPartBody] | None = Field(None, min_length=1, max_length=MAX_PARTS)
    k: int | None = Field(
        None, ge=1, description="number of results (default: the server's, 20; capped by it)"
    )
    filter: dict[str, MetadataValue] | None = Field(
        None, description="keep rows whose metadata equals each value"
    )
    exclude_ids: list[ImageId] = Field(default_factory=list, max_length=100_000)
    include_self: bool = False
    dedupe: float | None = Field(
        None, gt=0, le=1, description="drop near-duplicates at this cosine"
    )
    model: str | None = Field(
        None, description="the model spec the query vectors are for; refused if not this one"
    )
    tags: list[TagName] = Field(
        default_factory=list,
        max_length=100,
        description="keep rows holding every one of these tags",
    )
    exclude_tags: list[TagName] = Field(
        default_factory=list, max_length=100, description="leave out rows holding any of these tags"
    )
    relevant: list[ImageId] = Field(
        default_factory=list,
        max_length=MAX_MARKS,
        description="ids marked relevant (relevance feedback; a query on their own)",
    )
    irrelevant: list[ImageId] = Field(
        default_factory=list, max_length=MAX_MARKS, description="ids marked irrelevant"
    )
    diverse: float | None = Field(
        None, ge=0, le=1, description="0: relevance order ... 1: most varied results (MMR)"
    )


class SearchBatchBody(BaseModel):
    """Several searches in one request, answered in their order."""

    searches: list[SearchBody] = Field(
        ...,
        min_length=1,
        description="search bodies, at most the server's --max-batch (100 by default); "
        "a batch fetches no URL: search those one at a time",
    )


class CountBody(SearchBody):
    """A count: a search body (``k``, ``dedupe`` and ``diverse`` are ignored) and the least
    score that counts."""

    min_score: float = Field(..., ge=-1, le=1, description="count rows scoring at least this")


class CountResponse(BaseModel):
    """How many rows score at least ``min_score``: exact, or estimated from a sample with a
    95 % interval."""

    estimate: int
    low: int
    high: int
    exact: bool
    sampled: int = Field(description="rows scored")
    total: int = Field(description="rows the query may match (filter, exclusions applied)")
    took_ms: float


class HitBody(BaseModel):
    """One result."""

    id: int
    score: float
    url: str | None = Field(None, description="where to get the full image")
    thumbnail_url: str | None = None
    name: str = Field("", description=NAME_DOC)
    path: str | None = Field(None, description=PATH_DOC)
    width: int
    height: int
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    """Results, best first."""

    results: list[HitBody]
    took_ms: float
    model: str


class SearchBatchResponse(BaseModel):
    """Each search's results, best first, in the order of the searches."""

    results: list[list[HitBody]]
    took_ms: float
    model: str


class ItemBody(BaseModel):
    """A stored image."""

    id: int
    url: str | None
    thumbnail_url: str | None
    name: str = Field("", description=NAME_DOC)
    path: str | None = Field(None, description=PATH_DOC)
    width: int
    height: int
    metadata: dict[str, Any]
    tags: list[str] = Field(default_factory=list, description="the image's tags, sorted")


class CollectionBody(BaseModel):
    """A served collection."""

    name: str
    count: int
    model: str
    dim: int
    index: str
    supports_text: bool


class CollectionsResponse(BaseModel):
    """Every served collection."""

    collections: list[CollectionBody]


class AddUrlsBody(BaseModel):
    """Images to add by URL, each with optional metadata."""

    model_config = ConfigDict(extra="forbid")

    urls: list[str] = Field(..., min_length=1, max_length=1000)
    metadata: list[dict[str, MetadataValue]] | None = None


class FailedBody(BaseModel):
    """An image that was not added, and why."""

    source: str
    reason: str


class AddResponse(BaseModel):
    """What an add did."""

    added: int
    unchanged: int
    duplicates: int
    ids: list[int] = Field(description="ids of the images added, in order")
    items: list[ItemBody] = Field(description="the images added, in order")
    failed: list[FailedBody]


class DeleteResponse(BaseModel):
    """What a delete did."""

    removed: int


class ErrorDetail(BaseModel):
    """Why a request failed."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error answer has this shape."""

    error: ErrorDetail


class HealthResponse(BaseModel):
    """Liveness."""

    status: str
    collections: int


class KnnServiceBody(BaseModel):
    """clip-retrieval's /knn-service request. Flags lookalike does not implement
    (use_mclip, use_safety_model, use_violence_detector, aesthetic_*) are accepted and ignored."""

    model_config = ConfigDict(extra="allow")

    text: str | None = Field(None, max_length=2000)
    image: str | None = None
    image_url: str | None = None
    embedding_input: list[float] | None = None
    modality: str = "image"
    num_images: int = Field(40, ge=1)
    num_result_ids: int | None = Field(None, ge=1)
    indice_name: str | None = None
    deduplicate: bool = False
    use_mclip: bool = False
    use_safety_model: bool = False
    use_violence_detector: bool = False
    aesthetic_score: Any = None
    aesthetic_weight: Any = None


class MetadataBody(BaseModel):
    """clip-retrieval's /metadata request."""

    model_config = ConfigDict(extra="allow")

    ids: list[ImageId] = Field(..., max_length=10_000)
    indice_name: str | None = None


class TagBody(BaseModel):
    """Images to tag or untag."""

    model_config = ConfigDict(extra="forbid")

    tag: TagName
    ids: list[ImageId] = Field(..., min_length=1, max_length=100_000)


class TaggedResponse(BaseModel):
    """What a tag call did."""

    tagged: int = Field(description="images that did not hold the tag before")


class UntaggedResponse(BaseModel):
    """What an untag call did."""

    untagged: int = Field(description="images that held the tag")


class TagCountsResponse(BaseModel):
    """Every tag in use, and how many images hold it."""

    tags: dict[str, int]


class TaggedIdsResponse(BaseModel):
    """The images holding one tag."""

    tag: str
    ids: list[int]


class DuplicatesBody(BaseModel):
    """Which duplicates to find (POST body; GET takes the same as query parameters)."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.95, gt=0, le=1, description="cosine from which two images count as near copies"
    )
    exact: bool = Field(False, description="only exact copies (same content), no vectors")


class DuplicateGroupBody(BaseModel):
    """Images that are copies of one another."""

    keeper: int = Field(description="the image suggested to keep: most pixels, bytes, lowest id")
    ids: list[int] = Field(description="the group's images, the keeper first")
    extras: list[int] = Field(description="the images besides the keeper")
    exact: bool = Field(description="whether all hold the same content")
    score: float = Field(description="the lowest cosine among the links found (1 when exact)")


class DuplicatesResponse(BaseModel):
    """Groups of copies, largest first."""

    groups: list[DuplicateGroupBody]
    threshold: float
    exact: bool
    took_ms: float
