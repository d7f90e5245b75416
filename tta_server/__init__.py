"""tta-server: a FastAPI service that adapts a frozen classifier online, per request stream."""

from tta_server.app import create_app
from tta_server.settings import Settings

__all__ = ["Settings", "create_app"]
