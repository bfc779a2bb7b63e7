"""Starting a server: what to serve, as data that worker processes can rebuild the app from."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from ..errors import BadInputError
from ..lifeline import die_with_parent
from .settings import ServerSettings

CONFIG_ENV = "LOOKALIKE_SERVE_CONFIG"
# how long an orphaned worker may take finishing its requests on SIGTERM before it is ended
WORKER_GRACE_SECONDS = 3.0


@dataclass
class ServeConfig:
    """Collections by name, how to open them, and the server's settings."""

    collections: dict[str, str]
    settings: ServerSettings
    open_options: dict[str, Any] = field(default_factory=dict)  # device, runtime, threads
    allow_private_urls: bool = False

    @classmethod
    def from_entries(
        cls, entries: list[str], settings: ServerSettings, **options: Any
    ) -> ServeConfig:
        """From CLI arguments: each a directory (named after it) or NAME=DIR."""
        collections: dict[str, str] = {}
        for entry in entries:
            name, sep, folder = entry.partition("=")
            path = Path(folder if sep else entry).resolve()
            name = name if sep else path.name
            if name in collections:
                raise BadInputError(f"two collections are named {name!r}; use NAME=DIR")
            collections[name] = str(path)
        settings.check_caption_columns(collections)
        private = bool(options.pop("allow_private_urls", False))
        return cls(collections, settings, options, private)

    def to_json(self) -> str:
        """The config as JSON, for worker processes."""
        return json.dumps({**asdict(self), "settings": asdict(self.settings)})

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        settings: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data["settings"].items()
        }
        return cls(
            data["collections"],
            ServerSettings(**settings),
            data["open_options"],
            data["allow_private_urls"],
        )

    def build_app(self) -> FastAPI:
        """Open the collections (loading their models) and make the app."""
        from ..collection import Collection
        from ..fetch import FetchPolicy
        from .app import create_app

        policy = FetchPolicy(allow_private=self.allow_private_urls)
        opened = {
            name: Collection.open(path, fetch_policy=policy, **self.open_options)
            for name, path in self.collections.items()
        }
        return create_app(opened, self.settings)


def app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the app described by $LOOKALIKE_SERVE_CONFIG.

    A worker ends with the server's parent process, even one killed with SIGKILL.
    """
    die_with_parent(grace_seconds=WORKER_GRACE_SECONDS)
    return ServeConfig.from_json(os.environ[CONFIG_ENV]).build_app()


def serve_one(app: FastAPI, settings: ServerSettings, host: str, port: int) -> None:
    """Serve an app in this process until interrupted."""
    import uvicorn

    from .connections import uvicorn_options

    uvicorn.run(app, host=host, port=port, log_level="warning", **uvicorn_options(settings))


def serve_workers(config: ServeConfig, host: str, port: int, workers: int) -> None:
    """Serve from ``workers`` processes, each rebuilding the app from ``config``, under
    uvicorn's supervisor, over one listening socket with TCP_NODELAY set: the sockets that
    workers accept inherit it, where uvicorn's own setup left Nagle's algorithm on and every
    small answer waited 40 ms for a delayed ACK."""
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from .connections import uvicorn_options

    os.environ[CONFIG_ENV] = config.to_json()
    options = {"host": host, "port": port, "log_level": "warning"}
    server_config = uvicorn.Config(
        "lookalike.server.launch:app_from_env",
        factory=True,
        workers=workers,
        **options,
        **uvicorn_options(config.settings),
    )
    listening = server_config.bind_socket()
    listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    Multiprocess(server_config, sockets=[listening]).run()
