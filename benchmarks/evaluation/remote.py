"""Replaying a stream through a running tta-server (``tta-bench replay --server URL``).

Each run creates its stream with the replay's adapter and config (``POST /v1/streams``), then
sends every batch to ``POST /v1/predict`` as lossless PNG files, so the server sees exactly the
pixels the in-process replay feeds its adapter; a reset creates a new stream (none while the
current one has seen no image: it is at the source), and the streams are deleted at the end.
Request latencies are recorded per batch. The in-process counterpart with the same interface is
:class:`benchmarks.evaluation.local.LocalStream`.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import numpy as np
from PIL import Image


class ServerError(RuntimeError):
    """The server refused a request or runs another adapter than the replay asked for."""


class RemoteStream:
    def __init__(
        self,
        url: str,
        adapter: str,
        config: dict[str, Any] | None = None,
        timeout_s: float = 600.0,
        guard: dict[str, Any] | None = None,
    ) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.adapter = adapter
        self.config = config or {}
        self.guard = guard
        self.last_action: dict[str, Any] | None = None  # what the guard did in the last request
        self.client = httpx.Client(timeout=timeout_s)
        self.latencies_s: list[float] = []
        self.sent = 0  # requests on the current stream
        self.run_id = uuid.uuid4().hex[:8]
        self.resets = 0
        self.created: list[str] = []
        self.stream_id = self._new_stream()

    def _new_stream(self) -> str:
        stream_id = f"replay-{self.adapter}-{self.run_id}-{self.resets}"
        body: dict[str, Any] = {"stream_id": stream_id, "adapter": self.adapter, "config": self.config}
        if self.guard is not None:
            body["guard"] = self.guard
        response = self.client.post(f"{self.url}/v1/streams", json=body)
        if response.status_code == 201:
            self.created.append(stream_id)
        elif response.status_code != 404:  # 404: a server without the streams API uses its default adapter
            raise ServerError(f"creating stream {stream_id} answered {response.status_code}: {response.text[:300]}")
        return stream_id

    def reset(self) -> None:
        if self.sent == 0:
            return
        self.resets += 1
        self.sent = 0
        self.stream_id = self._new_stream()

    def step(self, images: np.ndarray) -> np.ndarray:
        """Class indices for a uint8 (N, H, W, 3) batch, predicted and adapted on by the server."""
        files = []
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "PNG")
            files.append(("files", (f"{index}.png", buffer.getvalue(), "image/png")))
        response = self.client.post(f"{self.url}/v1/predict", files=files, headers={"X-Stream-Id": self.stream_id})
        self.latencies_s.append(response.elapsed.total_seconds())
        self.sent += 1
        if response.status_code != 200:
            raise ServerError(f"{self.url}/v1/predict answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        self.last_action = body.get("guard")
        if body["adapter"] != self.adapter:
            raise ServerError(
                f"the server adapts with {body['adapter']!r}, the replay asked for {self.adapter!r}; "
                f"start it with --adapter {self.adapter}"
            )
        return np.asarray([p["class_index"] for p in body["predictions"]])

    def latency_summary(self) -> dict[str, float]:
        ms = np.asarray(self.latencies_s) * 1000
        return {
            "requests": int(ms.size),
            "p50": float(np.percentile(ms, 50)),
            "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)),
            "mean": float(ms.mean()),
        }

    def last_signals(self) -> dict[str, Any] | None:
        return None  # the server exports signals as metrics and on GET /v1/streams/{id}, not per request

    def finish(self, result: dict[str, Any]) -> None:
        result["server"] = {"url": self.url, "latency_ms": self.latency_summary()}
        self.close()

    def close(self) -> None:
        for stream_id in self.created:
            self.client.delete(f"{self.url}/v1/streams/{stream_id}")
        self.client.close()
