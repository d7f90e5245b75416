"""The server tests' harness: the real app under uvicorn on 127.0.0.1 with a random free port, in a
background thread (shared with the benchmarks that drive the REST API)."""

from __future__ import annotations

from benchmarks.performance.local_server import running_server
from benchmarks.performance.processes import free_port

__all__ = ["free_port", "running_server"]
