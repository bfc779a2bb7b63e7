"""Tags: names given to images ("labeled", "exported:batch-3", "label:police car").

Tags are stored with the rows (the backend's ``tag`` / ``untag`` / ``tags_of`` / ``tagged`` /
``tag_counts``), go with them when they are removed, and searches can require
(``tags=``) or skip (``exclude_tags=``) them inside the index search, so that "the next 500
not labeled yet" still gives 500 results. :class:`Tagging` gives ``Collection`` its tag calls.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import BadInputError, NotFoundError

if TYPE_CHECKING:
    from .backends import Backend

MAX_TAG = 200  # characters of a tag name
MAX_QUERY_TAGS = 100  # tags one search may require or exclude


def check_tag(tag: Any) -> str:
    """``tag`` if it is a usable tag name: a non-empty string of at most 200 printable
    characters (spaces, colons and any script allowed; no control characters)."""
    if not isinstance(tag, str):
        raise BadInputError(f"a tag must be a string (got {tag!r:.40})")
    if not tag or not tag.strip():
        raise BadInputError("a tag must not be empty")
    if len(tag) > MAX_TAG:
        raise BadInputError(f"a tag has at most {MAX_TAG} characters (got {len(tag)})")
    bad = next((c for c in tag if unicodedata.category(c) in {"Cc", "Cf", "Cs", "Zl", "Zp"}), None)
    if bad is not None:
        raise BadInputError(
            f"the tag {tag[:40]!r} holds the control character U+{ord(bad):04X}; tags are "
            "printable text"
        )
    return tag


def check_tags(tags: Any, what: str = "tags") -> tuple[str, ...]:
    """A list of tag names, each checked; one string is a list of one."""
    if isinstance(tags, str):
        tags = [tags]
    if isinstance(tags, (bytes, dict)) or not isinstance(tags, Iterable):
        raise BadInputError(f"{what} must be a list of tag names")
    checked = tuple(check_tag(t) for t in tags)
    if len(checked) > MAX_QUERY_TAGS:
        raise BadInputError(f"{what} may name at most {MAX_QUERY_TAGS} tags")
    return checked


def id_list(ids: Any) -> list[int]:
    """One id or many as a list of ints; anything that is not an integer id is refused."""
    import numpy as np

    many = [ids] if isinstance(ids, (int, np.integer)) else ids
    if isinstance(many, (str, bytes, dict)) or not isinstance(many, Iterable):
        raise BadInputError("ids must be an integer id or a list of them")
    out = []
    for i in many:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < 2**63:
            raise BadInputError(f"ids must be non-negative integers (got {i!r:.40})")
        out.append(int(i))
    return list(dict.fromkeys(out))


class Tagging:
    """``Collection``'s tag calls, over its backend."""

    backend: Backend

    def tag(self, ids: int | Iterable[int], tag: str) -> int:
        """Give images (one id or many) a tag; returns how many did not have it yet.

        Nothing is tagged when any id is not a stored image: NotFoundError names them.
        """
        tag, wanted = check_tag(tag), id_list(ids)
        with self.backend.writing():
            self._require_live(wanted, "nothing tagged")
            return self.backend.tag(wanted, tag)

    def untag(self, ids: int | Iterable[int], tag: str) -> int:
        """Take a tag from images (one id or many); returns how many had it."""
        tag, wanted = check_tag(tag), id_list(ids)
        with self.backend.writing():
            self._require_live(wanted, "nothing untagged")
            return self.backend.untag(wanted, tag)

    def tags(self, id: int) -> list[str]:
        """The tags of one stored image, sorted."""
        (wanted,) = id_list([id])
        self._require_live([wanted], "no tags")
        return self.backend.tags_of([wanted]).get(wanted, [])

    def tagged(self, tag: str) -> list[int]:
        """Ids of the stored images holding ``tag``, in id order."""
        return [int(i) for i in self.backend.tagged(check_tag(tag))]

    def tag_counts(self) -> dict[str, int]:
        """Every tag in use and how many stored images hold it."""
        self.backend.refresh()
        return self.backend.tag_counts()

    def _require_live(self, ids: Sequence[int], outcome: str) -> None:
        self.backend.refresh()
        count = self.backend.count
        rows = self.backend.rows([i for i in ids if i < count])
        missing = [str(i) for i in ids if i not in rows or rows[i].deleted]
        if missing:
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise NotFoundError(f"no image with id {', '.join(missing[:20])}{more}: {outcome}")
