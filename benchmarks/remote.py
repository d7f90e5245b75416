"""Replaying a stream through a running tta-server (``tta-bench replay --server URL``).

Each batch goes to ``POST /v1/predict`` as lossless PNG files on one stream id per run, so the
server sees exactly the pixels the in-process replay feeds its adapter; a reset starts a new
stream id (a fresh adapter on the server). Request latencies are recorded per batch.
"""

from __future__ import annotations

import io
import uuid

import numpy as np
from PIL import Image


class ServerError(RuntimeError):
    """The server refused a request or runs another adapter than the replay asked for."""


class RemoteStream:
    def __init__(self, url: str, adapter: str, timeout_s: float = 600.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.adapter = adapter
        self.client = httpx.Client(timeout=timeout_s)
        self.latencies_s: list[float] = []
        self.run_id = uuid.uuid4().hex[:8]
        self.resets = 0
        self.stream_id = self._new_stream_id()

    def _new_stream_id(self) -> str:
        return f"replay-{self.adapter}-{self.run_id}-{self.resets}"

    def reset(self) -> None:
        self.resets += 1
        self.stream_id = self._new_stream_id()

    def predict_and_adapt(self, images: np.ndarray) -> np.ndarray:
        """Class indices for a uint8 (N, H, W, 3) batch, predicted and adapted on by the server."""
        files = []
        for index, image in enumerate(images):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, "PNG")
            files.append(("files", (f"{index}.png", buffer.getvalue(), "image/png")))
        response = self.client.post(f"{self.url}/v1/predict", files=files, headers={"X-Stream-Id": self.stream_id})
        self.latencies_s.append(response.elapsed.total_seconds())
        if response.status_code != 200:
            raise ServerError(f"{self.url}/v1/predict answered {response.status_code}: {response.text[:300]}")
        body = response.json()
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

    def close(self) -> None:
        self.client.close()
