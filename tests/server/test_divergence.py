"""A diverging step on the real server: undone, answered with a clear 422, counted; no NaN or null
number ever reaches a response."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import torch
from torch import Tensor

from adapters.adapter_registry import ADAPTERS, register_adapter
from adapters.methods.tent import TentAdapter
from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings


@pytest.fixture
def diverging_adapter() -> Iterator[str]:
    """Tent whose third update blows its parameters up (as an absurd learning rate would)."""

    class DivergingTent(TentAdapter):
        def _forward_and_adapt(self, x: Tensor) -> Tensor:
            logits = super()._forward_and_adapt(x)
            if self.steps == 2:
                with torch.no_grad():
                    self.affine[0].fill_(float("inf"))
            return logits

    register_adapter("diverging-tent")(DivergingTent)
    try:
        yield "diverging-tent"
    finally:
        ADAPTERS._entries.pop("diverging-tent")


def predict(client: httpx.Client, seed: int) -> httpx.Response:
    files = [("files", (f"{i}.png", png(seed * 10 + i), "image/png")) for i in range(4)]
    return client.post("/v1/predict", files=files, headers={"X-Stream-Id": "wild"})


def test_a_diverging_step_is_undone_and_answered_with_422(diverging_adapter: str) -> None:
    with (
        running_server(Settings(default_adapter="norm", min_adapt_batch=4)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        assert client.post("/v1/streams", json={"stream_id": "wild", "adapter": diverging_adapter}).status_code == 201
        assert predict(client, 1).status_code == 200 and predict(client, 2).status_code == 200
        before = client.get("/v1/streams/wild").json()
        refused = predict(client, 3)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "step_diverged", refused.text
        after = client.get("/v1/streams/wild").json()
        assert after["steps"] == before["steps"] == 2 and after["state_bytes"] == before["state_bytes"]
        assert client.get("/v1/persistence").json()["diverged_steps"] == 1
        # every number in every answer is finite
        for response in (client.get("/v1/streams"), client.get("/v1/streams/wild"), client.get("/v1/memory")):
            assert (
                "NaN" not in response.text
                and "Infinity" not in response.text
                and "null"
                not in response.text.replace('"budget_bytes":null', "").replace('"snapshot_written_at":null', "")
            )
