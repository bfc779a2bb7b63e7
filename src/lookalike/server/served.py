"""The collections one server answers for, and how a request's search becomes a Query."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..collection import Collection
from ..errors import BadInputError, InvalidQueryError, LookalikeError, NotFoundError, placed
from ..query import Query
from .fetching import FetchWork
from .settings import ServerSettings


class Served:
    """The collections a server answers for, by name."""

    def __init__(self, collections: Mapping[str, Collection], settings: ServerSettings) -> None:
        self.collections = dict(collections)
        self.settings = settings
        self.url_work = FetchWork(settings.fetch_threads)  # never the threads of other requests

    def __getitem__(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except KeyError:
            raise NotFoundError(f"no collection named {name!r}") from None

    def query(self, body: Mapping[str, Any], **parts: Any) -> Query:
        """The search of a request body (and parts given apart, as an upload): the one place
        where the server's default k and its cap apply."""
        settings = self.settings
        if not isinstance(body, Mapping):
            raise InvalidQueryError("a search body must be a JSON object")
        body = {"k": min(settings.default_k, settings.max_k), **body}
        k = body["k"]
        if isinstance(k, int) and not isinstance(k, bool) and k > settings.max_k:
            raise BadInputError(f"k must be at most {settings.max_k} on this server")
        return Query.build(**parts, **body) if parts else Query.from_json(body)

    def queries(self, body: Any) -> list[Query]:
        """The searches of a batch body, ``{"searches": [search bodies]}``; a batch fetches no
        URL (fetching is bounded work a request at a time)."""
        searches = body.get("searches") if isinstance(body, Mapping) else None
        if not isinstance(searches, list) or set(body) != {"searches"}:
            raise InvalidQueryError('a batch body is {"searches": [search bodies]}')
        if not searches:
            raise InvalidQueryError("a batch holds at least one search")
        if len(searches) > self.settings.max_batch:
            raise BadInputError(
                f"a batch holds 1 to {self.settings.max_batch} searches (got {len(searches)})"
            )
        queries = []
        for n, search in enumerate(searches):
            try:
                queries.append(self.query(search))
            except LookalikeError as error:
                raise placed(error, f"searches[{n}]") from error
            if queries[-1].fetches:
                raise InvalidQueryError(f"searches[{n}]: search a URL on its own, not in a batch")
        return queries

    def path_roots(self, name: str) -> list[str] | None:
        """The folders that hits' paths are shown relative to; None where paths are hidden."""
        return self[name].roots() if self.settings.show_paths else None
