"""tta-server: a FastAPI service that adapts a frozen classifier online, per request stream."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tta-server")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from tta_server.app import create_app
from tta_server.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
