"""CLIP's byte-pair tokenizer without torch, so an exported text tower runs without importing it.

Importing torch and open_clip costs seconds, more than a whole search on the exported model.
This is open_clip's ``SimpleTokenizer`` (itself OpenAI CLIP's, MIT License, Copyright (c) 2021
OpenAI) returning numpy arrays. An export records it only after checking that it gives
open_clip's tokens on probe texts; models with other tokenizers keep open_clip's.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
CLEANERS = {"_clean_lower": "lower", "_clean_whitespace": "whitespace"}


def open_clip_vocab() -> Path:
    """The BPE merges file shipped with open_clip, found without importing it."""
    from importlib.util import find_spec

    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("open_clip is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / VOCAB_FILE


def describe(tokenizer: object) -> dict[str, Any] | None:
    """How to rebuild an open_clip tokenizer here, or None if it is not a plain CLIP BPE one."""
    if type(tokenizer).__name__ != "SimpleTokenizer":
        return None
    clean = CLEANERS.get(getattr(getattr(tokenizer, "clean_fn", None), "__name__", ""))
    plain = getattr(tokenizer, "reduction_fn", None) is None
    if clean is None or not plain or getattr(tokenizer, "vocab_size", 0) != 49408:
        return None
    context_length: int = getattr(tokenizer, "context_length")  # noqa: B009 (an open_clip tokenizer)
    return {"kind": "clip-bpe", "context_length": context_length, "clean": clean}


class ClipTokenizer:
    """Texts -> int64 token ids of shape (n, context_length), as open_clip's tokenizer."""

    def __init__(self, vocab: Path, context_length: int = 77, clean: str = "lower") -> None:
        import regex

        with gzip.open(vocab) as handle:
            merges = handle.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        pairs = [tuple(merge.split()) for merge in merges]
        symbols = list(_bytes_to_unicode().values())
        symbols = symbols + [s + "</w>" for s in symbols] + ["".join(p) for p in pairs]
        special = ["<start_of_text>", "<end_of_text>"]
        self.encoder = {s: i for i, s in enumerate(symbols + special)}
        self.ranks = {pair: i for i, pair in enumerate(pairs)}
        self.cache = {s: s for s in special}
        self.sot, self.eot = self.encoder[special[0]], self.encoder[special[1]]
        self.context_length = context_length
        self.lower = clean == "lower"
        self.pattern = regex.compile(
            "|".join(special) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def __call__(self, texts: list[str]) -> np.ndarray:
        result = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            tokens = [self.sot, *self.encode(text), self.eot]
            if len(tokens) > self.context_length:
                tokens = tokens[: self.context_length]
                tokens[-1] = self.eot
            result[row, : len(tokens)] = tokens
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start and end tokens."""
        import ftfy

        text = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split())
        if self.lower:
            text = text.lower()
        byte_map = _bytes_to_unicode()
        ids: list[int] = []
        for piece in self.pattern.findall(text):
            word = "".join(byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[token] for token in self._bpe(word).split(" "))
        return ids

    def _bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = set(pairwise(word))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, float("inf")))
            if best not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        self.cache[token] = " ".join(word)
        return self.cache[token]


@lru_cache
def _bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable character map of GPT-2's byte-level BPE."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))
