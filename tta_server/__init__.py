"""tta-server: a FastAPI service that adapts a frozen classifier online, per request stream."""

import os
from importlib.metadata import PackageNotFoundError, version

# torch's C++ side writes to stderr past the logging setup, so a JSON log stream would get plain
# lines: kineto a trace marker at every profiler start and stop (the working-memory measurement of
# each new adapter config), c10 a warning about blocks allocated before profiling. Both are read
# when torch loads, hence here; an operator's own values win. Kineto serves only that measurement,
# whose failures raise.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # above USDT (5), kineto's highest level

try:
    __version__ = version("tta-server")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from tta_server.app import create_app
from tta_server.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
