"""Run the real app under uvicorn on 127.0.0.1 with a random free port, in a background thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from benchmarks.performance.processes import free_port
from tta_server import Settings, create_app
from tta_server.http_protocol import head_deadline_protocol


@contextmanager
def running_server(settings: Settings, timeout: float = 60.0) -> Iterator[str]:
    port = free_port()
    http = head_deadline_protocol(settings.request_head_timeout_s)  # as tta-server serve runs it
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server exited during start-up")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
