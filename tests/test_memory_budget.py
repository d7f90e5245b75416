"""Memory budget: idle streams spill to disk and wake up exactly as they were."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import torch

from adapters import create_adapter, create_source_model
from tests.server_harness import running_server
from tests.test_dynamic_batching import files, images, probabilities
from tta_server import Settings


def test_idle_streams_spill_and_wake_up_unchanged(tmp_path: Path) -> None:
    # one tent stream's state after a step is ~41 KB: the budget holds one stream, not two
    settings = Settings(default_adapter="tent", min_adapt_batch=4, memory_budget_bytes=60_000, snapshot_dir=tmp_path)
    reference = create_adapter("tent", create_source_model())
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def predict(stream: str, seed: int) -> dict:  # type: ignore[type-arg]
            response = client.post("/v1/predict", files=files(images(4, seed)), headers={"X-Stream-Id": stream})
            assert response.status_code == 200, response.text
            return response.json()  # type: ignore[no-any-return]

        predict("a", 1)
        predict("b", 2)  # over budget: "a" (least recently used) goes to disk
        in_memory = {s["stream_id"] for s in client.get("/v1/streams").json()}
        assert in_memory == {"b"} and (tmp_path / "a.safetensors").is_file()
        woken = predict("a", 3)  # "a" comes back (and "b" goes out)
        assert woken["step"] == 2
        for seed in (1, 3):
            batch = torch.from_numpy(images(4, seed)).permute(0, 3, 1, 2).float() / 255
            expected = reference.forward_and_adapt(batch).softmax(1).numpy()
        got = probabilities(woken)
        top = expected.argsort(1)[:, ::-1][:, :5]
        np.testing.assert_allclose(np.take_along_axis(got, top, 1), np.take_along_axis(expected, top, 1), atol=1e-5)
        assert {s["stream_id"] for s in client.get("/v1/streams").json()} == {"a"}
        assert client.get("/v1/streams/b").json()["steps"] == 1  # a spilled stream answers too


def test_idle_streams_leave_memory_and_come_back(tmp_path: Path) -> None:
    import time

    settings = Settings(default_adapter="tent", min_adapt_batch=4, idle_timeout_s=0.4, snapshot_dir=tmp_path)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "sleepy"})
        deadline = time.monotonic() + 10
        while client.get("/v1/streams").json() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/v1/streams").json() == [] and (tmp_path / "sleepy.safetensors").is_file()
        again = client.post("/v1/predict", files=files(images(4, 2)), headers={"X-Stream-Id": "sleepy"})
        assert again.json()["step"] == 2  # woke up from its snapshot, not from the source
    dropping = Settings(default_adapter="norm", idle_timeout_s=0.4)
    with running_server(dropping) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=files(images(4, 1)), headers={"X-Stream-Id": "gone"})
        time.sleep(1.0)
        assert client.get("/v1/streams/gone").status_code == 404  # no snapshots: dropped
