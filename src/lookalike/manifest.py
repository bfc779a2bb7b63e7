"""A collection's manifest (``lookalike.json``): format version, model spec, dimension and
backend, written once at creation and checked at every open."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import CollectionError
from .layout import MANIFEST, write_atomic

FORMAT_VERSION = 1


def new_manifest(model: str, weights: str | None, dim: int, backend: str = "embedded") -> dict:
    """The manifest of a collection about to be made."""
    return {
        "format": FORMAT_VERSION,
        "model": model,
        "weights": weights,
        "dim": dim,
        "metric": "cosine",
        "backend": backend,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_by": f"lookalike {__version__}",
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest whole, making ``root`` if needed."""
    root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / MANIFEST, json.dumps(manifest, indent=2) + "\n")


def read_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the collection at ``root``; CollectionError when there is none or it
    cannot be read or is of another format."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CollectionError(
            f"{root} is not a lookalike collection (no {MANIFEST}); "
            "make one with `lookalike index SOURCE -c DIR` or Collection.create"
        ) from None
    except (OSError, ValueError) as error:
        raise CollectionError(f"cannot read {root / MANIFEST}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise CollectionError(
            f"{root} has collection format {found!r}; this lookalike reads format {FORMAT_VERSION}"
        )
    return manifest
