"""The HTTP API, a thin face over :class:`lookalike.Collection` (needs the ``server`` extra)."""

from .app import create_app
from .settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
