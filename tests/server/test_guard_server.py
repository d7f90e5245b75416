"""The guard on the real server (uvicorn, httpx) and in offline replay: same decisions, shown in
GET /v1/streams/{id}, in the predict answer and on /metrics."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.data.cifar10c import CORRUPTIONS
from benchmarks.evaluation.replay import ReplayConfig, replay_dataset
from tests.helpers import files, images, png
from tests.server_harness import running_server
from tta_server import Settings

PERIODIC = {"reset_every_steps": 2}


@pytest.mark.parametrize("max_delay_ms", [0.0, 5.0], ids=["alone", "dynamic batching"])
def test_a_stream_guard_acts_and_is_reported_everywhere(max_delay_ms: float) -> None:
    settings = Settings(
        default_adapter="tent",
        min_adapt_batch=4,
        signal_window_steps=1,
        metrics_streams=["cam"],
        max_delay_ms=max_delay_ms,  # a grouped step's guard action reaches each of its requests
    )
    files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        created = client.post("/v1/streams", json={"stream_id": "cam", "guard": PERIODIC})
        assert created.status_code == 201, created.text
        assert created.json()["guard"]["config"]["reset_every_steps"] == 2
        answers = [client.post("/v1/predict", files=files, headers={"X-Stream-Id": "cam"}).json() for _ in range(3)]
        assert [a["step"] for a in answers] == [1, 0, 1]
        assert answers[0]["guard"] is None and answers[1]["guard"]["reason"] == "periodic"
        guard = client.get("/v1/streams/cam").json()["guard"]
        assert guard["actions"]["periodic"] == 1 and guard["decisions"][0]["images"] == 8
        client.post("/v1/predict", files=files, headers={"X-Stream-Id": "other"})
        other = client.get("/v1/streams/other").json()
        assert "reset_every_steps" not in other["guard"]["config"] and other["bn_shift_layers"]
        metrics = client.get("/metrics").text
        assert 'tta_guard_actions_total{action="reset",adapter="tent",reason="periodic"} 1.0' in metrics
        assert 'tta_stream_guard_actions_total{reason="periodic",stream="cam"} 1.0' in metrics
        assert 'tta_stream_signal{signal="bn_shift",stream="cam"}' in metrics
        assert 'stream="other"' not in metrics  # only the operator's allowlist gets per-stream series
        assert 'tta_batch_bn_shift_nats_count{adapter="tent"} 4.0' in metrics


def test_an_invalid_guard_is_a_clear_422() -> None:
    with running_server(Settings()) as url, httpx.Client(base_url=url, timeout=60) as client:
        bad = {"stream_id": "cam", "guard": {"thresholds": [{"signal": "accuracy", "below": 0.5}]}}
        refused = client.post("/v1/streams", json=bad)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_guard"
        assert "unknown signal 'accuracy'" in refused.json()["error"]["message"]
        assert client.get("/v1/streams/cam").status_code == 404


def test_replay_guard_decisions_are_identical_in_process_and_through_the_server(tmp_path: Path) -> None:
    from adapters import create_source_model

    rng = np.random.default_rng(3)
    root = tmp_path / "c10c"
    root.mkdir()
    np.save(root / "labels.npy", np.tile(np.arange(32) % 10, 5).astype(np.uint8))
    for name in CORRUPTIONS[:2]:
        coarse = rng.integers(0, 256, size=(160, 8, 8, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", coarse.repeat(4, axis=1).repeat(4, axis=2))
    guard = {"thresholds": [{"signal": "majority_share", "above": 0.25}], "reset_every_steps": 5}
    config = ReplayConfig(
        adapter="tent",
        batch_size=16,
        corruptions=CORRUPTIONS[:2],
        guard=guard,
        window_steps=2,
        visits=2,
        setting="recurring",
    )
    local = replay_dataset(create_source_model(), root, config, progress=False)
    with running_server(Settings(default_adapter="tent", min_adapt_batch=16, signal_window_steps=2)) as url:
        remote = replay_dataset(create_source_model(), root, config, progress=False, server=url)
    assert local["guard"]["decisions"], "the guard never acted: the test would prove nothing"
    assert remote["guard"] == local["guard"]
    assert [b["errors"] for b in remote["batches"]] == [b["errors"] for b in local["batches"]]
    assert set(local["per_domain_error"]) == {f"{name}#{visit}" for name in CORRUPTIONS[:2] for visit in (1, 2)}


def test_a_guard_with_too_many_rules_is_refused() -> None:
    """A client's guard is bounded: thousands of rules would make every window close expensive."""
    rules = [{"signal": "majority_share", "above": 0.5}] * 1000
    with running_server(Settings()) as url, httpx.Client(base_url=url, timeout=60) as client:
        refused = client.post("/v1/streams", json={"stream_id": "cam", "guard": {"thresholds": rules}})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_guard", refused.text
        refused = client.post("/v1/streams", json={"stream_id": "cam", "guard": {"max_drop": {"x" * 40: 0.1}}})
        assert refused.status_code == 422


def test_the_server_measures_its_signals_at_the_configured_precision() -> None:
    import torch

    from adapters import create_adapter, create_source_model, get_frozen_forward
    from adapters.online import OnlineStream

    batch = images(16, seed=11)  # min_adapt_batch: a batch the step adapts on, so the probe runs
    settings = Settings(default_adapter="norm", signal_precision="bf16")
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
        answer = client.post("/v1/predict", files=files(batch), headers={"X-Stream-Id": "cam"})
        assert answer.status_code == 200, answer.text
        served = torch.tensor(client.get("/v1/streams/cam").json()["bn_shift_layers"])
    source = create_source_model()
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div(255)
    local = {}
    for precision in ("fp32", "bf16"):
        stream = OnlineStream(create_adapter("norm", source), 1, get_frozen_forward(source), signal_precision=precision)
        stream.step(x)
        local[precision] = torch.tensor(stream.last_bn_shift)
    assert float((local["bf16"] - local["fp32"]).abs().max()) > 1e-4  # the two precisions are distinguishable
    assert float((served - local["bf16"]).abs().max()) < float((served - local["fp32"]).abs().max())
