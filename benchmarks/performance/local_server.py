"""The real app under uvicorn on 127.0.0.1 (a free port), in a background thread of this process,
with the HTTP protocol ``tta-server serve`` runs: for the benchmarks that drive the REST API and
for the server tests."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from benchmarks.performance.processes import free_port
from tta_server import Settings, create_app
from tta_server.http_protocol import head_deadline_protocol


@contextlib.contextmanager
def running_server(settings: Settings, start_timeout_s: float = 60.0, stop_timeout_s: float = 30.0) -> Iterator[str]:
    """Yields the server's base URL; raises, rather than waits forever, when it cannot start."""
    import uvicorn

    port = free_port()
    http = head_deadline_protocol(settings.request_head_timeout_s)
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on", http=http
    )
    server = uvicorn.Server(config)

    def serve() -> None:
        with contextlib.suppress(SystemExit):  # uvicorn's exit on a failed start-up; reported below
            server.run()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server exited during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"server did not start within {start_timeout_s} s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=stop_timeout_s)
