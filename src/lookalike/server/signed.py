"""Signed image links over HTTP: a key holder asks for links that open one image each,
without a key, until they expire (for labeling tools; see :mod:`lookalike.signing`)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..collection import Collection
from ..errors import NotFoundError
from ..signing import DEFAULT_TTL_S, MAX_TTL_S, sign_image_url
from .schemas import ImageId
from .served import Served

MAX_SIGNED = 10_000


class SignedUrlsBody(BaseModel):
    """Which images to sign links for, and for how long."""

    model_config = ConfigDict(extra="forbid")

    ids: list[ImageId] = Field(..., min_length=1, max_length=MAX_SIGNED)
    ttl_s: int = Field(DEFAULT_TTL_S, ge=1, le=MAX_TTL_S, description="seconds the links last")


class SignedUrlBody(BaseModel):
    """One image's signed link."""

    id: int
    url: str = Field(..., description="absolute link, readable without an API key")
    expires: int = Field(..., description="Unix time after which the link is refused")


class SignedUrlsResponse(BaseModel):
    """Signed links, in the order of the ids asked for."""

    urls: list[SignedUrlBody]


def router(served: Served) -> APIRouter:
    """The route that signs image links with the server's secret."""
    api = APIRouter()

    @api.post("/v1/collections/{name}/signed-urls", response_model=SignedUrlsResponse)
    def signed_urls(name: str, body: SignedUrlsBody, request: Request) -> SignedUrlsResponse:
        """Links to these images that open without an API key until they expire; each link
        opens its own image only."""
        collection = served[name]
        missing = [i for i in body.ids if not _stored(collection, i)]
        if missing:
            raise NotFoundError(f"no image with id {', '.join(map(str, missing[:20]))}")
        base = served.settings.public_url or str(request.base_url)
        secret, now = served.settings.url_secret, int(time.time())
        return SignedUrlsResponse(
            urls=[
                SignedUrlBody(
                    id=i,
                    url=sign_image_url(base, name, i, secret, ttl_s=body.ttl_s, now=now),
                    expires=now + body.ttl_s,
                )
                for i in body.ids
            ]
        )

    return api


def _stored(collection: Collection, item_id: int) -> bool:
    try:
        collection.get(item_id)
    except NotFoundError:
        return False
    return True
