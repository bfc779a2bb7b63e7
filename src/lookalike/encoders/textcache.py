"""A small LRU cache of text embeddings (a repeated query text skips the model), and the
checks every text query passes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..errors import BadInputError

DEFAULT_SIZE = 1024
MAX_TEXT_CHARS = 2000


def check_texts(texts: list[str]) -> None:
    """Refuse empty, non-string and overlong texts."""
    for text in texts:
        if not isinstance(text, str) or not text.strip():
            raise BadInputError("a text query must be a non-empty string")
        if len(text) > MAX_TEXT_CHARS:
            raise BadInputError(f"a text query is limited to {MAX_TEXT_CHARS} characters")


class TextCache:
    """Maps text -> unit vector, keeping the ``size`` most recently used (0 disables it)."""

    def __init__(self, size: int = DEFAULT_SIZE) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # the server encodes from several threads

    def encode(self, texts: list[str], encode: Callable[[list[str]], np.ndarray]) -> np.ndarray:
        """Vectors of ``texts``, calling ``encode`` once for those not cached."""
        if self.size <= 0:
            return encode(texts)
        with self._lock:
            found = {t: self._entries[t] for t in texts if t in self._entries}
            for text in found:
                self._entries.move_to_end(text)
        missing = list(dict.fromkeys(t for t in texts if t not in found))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        if missing:
            vectors = encode(missing)
            vectors.setflags(write=False)
            with self._lock:
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = vector
                    self._entries[text] = vector
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return np.stack([found[t] for t in texts])

    def clear(self) -> None:
        """Forget every cached vector."""
        with self._lock:
            self._entries.clear()
