"""Pretrained open_clip checkpoints: found in the local caches, or downloaded once, or a clear
error in seconds when the model hub cannot be reached.

open_clip itself asks the hub about a file even when it is cached, and retries an unreachable
hub for about a minute (dozens of log lines) before it fails. Here the checkpoint is looked up
in the caches first; only a missing one is downloaded, after a quick check (a few seconds)
that the hub answers, and never when ``HF_HUB_OFFLINE`` is set.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import BadInputError, LookalikeError

CONNECT_TIMEOUT_S = 3.0
HF_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
OFFLINE_HINT = (
    "To run offline, give a local checkpoint: `--model open_clip:ARCH --weights FILE` "
    "(Python: weights=FILE), e.g. the random-weights one `lookalike demo` writes "
    "(WORKDIR/random-ViT-B-32.pt), or copy the model into the Hugging Face cache on a "
    "machine that has internet."
)


class ModelUnavailableError(LookalikeError):
    """A pretrained checkpoint is neither cached nor downloadable (offline, hub unreachable)."""

    code = "model_unavailable"


def pretrained_checkpoint(arch: str, tag: str) -> tuple[str, dict[str, Any]]:
    """(local checkpoint file, open_clip's pretrained config) of ``arch``/``tag``: from the
    caches, else downloaded; raises :class:`ModelUnavailableError` fast when offline."""
    import open_clip

    config = open_clip.get_pretrained_cfg(arch, tag)
    if not config:
        known = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        raise BadInputError(f"open_clip has no pretrained tag {tag!r} for {arch} (known: {known})")
    cached = cached_checkpoint(config)
    if cached:
        return cached, config
    require_hub(f"open_clip:{arch}/{tag}", config)
    try:
        return open_clip.download_pretrained(config), config
    except Exception as error:  # hub, HTTP and file errors of many types
        raise ModelUnavailableError(
            f"cannot download open_clip:{arch}/{tag}: {_first_line(error)}. {OFFLINE_HINT}"
        ) from error


def cached_checkpoint(config: dict[str, Any]) -> str | None:
    """The checkpoint of a pretrained config if it is already on disk (no network)."""
    if config.get("file"):
        return str(config["file"])
    hub = config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        names = [filename] if filename else list(HF_WEIGHTS)
        if filename.endswith((".bin", ".pth")):  # open_clip prefers a safetensors twin
            names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str):
                return found
        return None
    url = config.get("url", "")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    return str(target) if url and target.is_file() else None


def require_hub(spec: str, config: dict[str, Any]) -> None:
    """Raise :class:`ModelUnavailableError` unless the checkpoint's host can be reached."""
    if offline():
        raise ModelUnavailableError(
            f"{spec} is not downloaded yet and HF_HUB_OFFLINE is set. {OFFLINE_HINT}"
        )
    if config.get("hf_hub"):
        address = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        address = config.get("url", "")
    reason = unreachable(address)
    if reason:
        raise ModelUnavailableError(f"{spec} is not downloaded yet and {reason}. {OFFLINE_HINT}")


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    flags = (os.environ.get(name, "") for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(flag.strip().lower() in {"1", "true", "yes", "on"} for flag in flags)


def unreachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the host of ``address`` (or the HTTPS proxy that would carry the request) cannot
    be reached within ``timeout`` seconds; None when it answers."""
    parts = urlsplit(address)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy and parts.scheme == "https":
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host}:{port} cannot be reached ({error.strerror or error})"
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
