"""Shared fixtures: tiny random-weight models saved as local files, and generated images."""

from __future__ import annotations

import functools
import json
import socketserver
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from helpers import encode, serve_app  # noqa: F401  (re-exported for older imports)
from lookalike.demo import draw_image

if TYPE_CHECKING:
    pass

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session", autouse=True)
def _runtime_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Model exports (encoders.runtime) go to a temporary cache, not the user's home."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LOOKALIKE_CACHE", str(tmp_path_factory.mktemp("lookalike-cache")))
        yield


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """(spec, weights file) of a tiny open_clip model with random weights, saved to disk."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = folder / "lookalike-tiny.json"
    config.write_text(json.dumps(TINY_CLIP), encoding="utf-8")
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model("lookalike-tiny")
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return f"open_clip:{config}", weights


@pytest.fixture(scope="session")
def backbone_weights(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Saves a random-weight torchvision classifier's state_dict; returns its file."""
    import torch
    import torchvision

    folder = tmp_path_factory.mktemp("backbones")
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            torch.manual_seed(0)
            model = torchvision.models.get_model(arch, weights=None)
            made[arch] = folder / f"{arch}.pth"
            torch.save(model.state_dict(), made[arch])
        return made[arch]

    return make


FORMATS = [
    ("PNG", ".png", "RGB"),
    ("JPEG", ".jpg", "RGB"),
    ("WEBP", ".webp", "RGB"),
    ("GIF", ".gif", "P"),
    ("BMP", ".bmp", "RGB"),
    ("TIFF", ".tif", "RGB"),
    ("PNG", ".png", "RGBA"),
    ("PNG", ".png", "L"),
    ("JPEG", ".jpeg", "CMYK"),
    ("PNG", ".png", "LA"),
]


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Writes ``count`` distinct images of several formats, modes and sizes into a folder."""

    def make(count: int = 24, name: str = "photos", start: int = 0) -> Path:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for i in range(start, start + count):
            fmt, suffix, mode = FORMATS[i % len(FORMATS)]
            size = (32 + (i * 7) % 90, 24 + (i * 11) % 70)
            sub = folder / ("nested" if i % 3 == 0 else "")
            sub.mkdir(exist_ok=True)
            (sub / f"img{i:04d}{suffix}").write_bytes(encode(draw_image(i, size, mode), fmt))
        return folder

    return make


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # HTTPServer's would look the host name up
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


@pytest.fixture(scope="session")
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """(folder, base URL): files put in the folder are served at http://127.0.0.1:PORT/NAME."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = _LocalServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Milvus standalone server of its own, for each test module that asks for one."""
    if sys.platform not in ("linux", "darwin"):
        pytest.skip(f"the milvus package ships its server for Linux and macOS, not {sys.platform}")
    from lookalike.backends.milvus import local_server

    with local_server(tmp_path_factory.mktemp("milvus-server")) as uri:
        yield uri
