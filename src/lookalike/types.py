"""The small shared vocabulary of the library, the server and the client."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Item:
    """A stored image: where it lives, its size in pixels and its metadata."""

    id: int
    path: str | None = None  # local file, for images read from disk
    url: str | None = None  # remote address, for images fetched from the web
    width: int = 0
    height: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def locator(self) -> str:
        """The path or URL the image came from."""
        return self.path or self.url or ""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class Hit(Item):
    """A search result: a stored image and its cosine similarity to the query."""

    score: float


@dataclass
class IngestReport:
    """What an ingest run did."""

    added: int = 0
    unchanged: int = 0  # already stored under the same path or URL
    duplicates: int = 0  # same content as an image already stored
    replaced: int = 0  # a stored path whose content changed
    removed: int = 0  # removed by a user before and unchanged since: skipped
    failed: list[tuple[str, str]] = field(default_factory=list)  # (locator, reason)
    seconds: float = 0.0
    ids: list[int] = field(default_factory=list)  # of the images added, in order

    @property
    def seen(self) -> int:
        """Items looked at."""
        return self.added + self.unchanged + self.duplicates + self.removed + len(self.failed)

    @property
    def images_per_second(self) -> float:
        """Added images per second of wall time."""
        return self.added / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            **asdict(self),
            "failed": [{"source": s, "reason": r} for s, r in self.failed],
            "images_per_second": round(self.images_per_second, 2),
        }


@dataclass(frozen=True)
class Stats:
    """What a collection holds."""

    path: str
    count: int
    deleted: int
    model: str
    weights: str | None
    dim: int
    index: str
    bytes_on_disk: int
    format: int


@dataclass(frozen=True)
class MatchCount:
    """How many rows score at least a threshold for a query: ``estimate`` within [``low``,
    ``high``] (a 95 % interval; all three equal when ``exact``), from ``sampled`` rows scored
    out of ``total`` rows the query may match."""

    estimate: int
    low: int
    high: int
    exact: bool
    sampled: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DuplicateGroup:
    """Images that are copies of one another: ``ids`` (the keeper first, then ascending),
    the ``keeper`` suggested to keep, whether all are ``exact`` copies (one content hash),
    and ``score``, the lowest cosine among the links found between them (1.0 for exact)."""

    keeper: int
    ids: list[int]
    exact: bool
    score: float

    @property
    def extras(self) -> list[int]:
        """The ids other than the keeper: the copies one could remove or tag."""
        return [i for i in self.ids if i != self.keeper]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {**asdict(self), "extras": self.extras}
