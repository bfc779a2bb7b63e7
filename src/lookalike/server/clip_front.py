"""clip-retrieval's web front end, served at /clip-front/ from the installed ``clip-retrieval``
wheel (its ``front/build`` folder), with a ``config.json`` pointing it at this server.

The wheel's dependencies pin versions lookalike does not use; install it alone:
``pip install --no-deps clip-retrieval==2.45.0``. Nothing of it is imported."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from ..errors import BadInputError
from .compat import public_base

if TYPE_CHECKING:
    from .app import Served

PREFIX = "/clip-front"
INSTALL = "pip install --no-deps clip-retrieval==2.45.0"


def build_folder() -> Path:
    """The front end's built files in the installed clip-retrieval wheel."""
    try:
        wheel = metadata.distribution("clip-retrieval")
    except metadata.PackageNotFoundError:
        raise BadInputError(
            f"serving clip-retrieval's front end needs its wheel: {INSTALL}"
        ) from None
    folder = Path(str(wheel.locate_file("front/build")))
    if not (folder / "index.html").is_file():
        raise BadInputError(
            f"the installed clip-retrieval {wheel.version} has no front end at {folder}; {INSTALL}"
        )
    return folder


def mount(app: FastAPI, served: Served) -> None:
    """Serve the front end at /clip-front/; its config.json names this server as the back
    end (so no CORS is needed), the first collection as the index and ``url`` as the column
    of image links."""
    folder = build_folder()
    default_index = next(iter(served.collections), "")

    @app.get(PREFIX, include_in_schema=False)
    def front_page(request: Request) -> RedirectResponse:
        # the front loads config.json and its scripts relative to the page: it needs the slash
        return RedirectResponse(request.scope.get("root_path", "") + PREFIX + "/")

    @app.get(PREFIX + "/config.json", include_in_schema=False)
    def front_config(request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "defaultBackend": public_base(request, served.settings),
                "defaultIndex": default_index,
                "urlColumn": "url",
            },
            headers={"cache-control": "no-cache"},
        )

    app.mount(PREFIX, StaticFiles(directory=folder, html=True), name="clip-front")
