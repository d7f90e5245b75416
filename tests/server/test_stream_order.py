"""One stream's requests, resets and deletes take effect in arrival order, even when they race."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import httpx
import pytest

from adapters import SourceModel
from tests.conftest import image_batch
from tests.helpers import files, images
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import StreamManager, StreamOptions, UnknownStreamError


@pytest.mark.parametrize("max_delay_ms", [0.0, 20.0], ids=["alone", "dynamic batching"])
@pytest.mark.parametrize("auto_create", [True, False])
def test_a_step_queued_behind_a_delete_comes_after_it(
    tiny_source: SourceModel, auto_create: bool, max_delay_ms: float
) -> None:
    """With auto-create, a step that waited behind its stream's delete starts the stream afresh, as
    it would have a moment later; without, the stream is unknown."""

    async def main() -> None:
        options = StreamOptions(
            default_adapter="tent", min_adapt_batch=4, auto_create=auto_create, max_delay_ms=max_delay_ms
        )
        manager = StreamManager(tiny_source, options)
        try:
            if not auto_create:
                await manager.create("cam", "tent", {})
            await manager.step("cam", image_batch(4, 0))
            old = manager.streams["cam"]
            await old.lock.acquire()  # a long step in flight
            delete = asyncio.create_task(manager.delete("cam"))
            await asyncio.sleep(0.05)
            step = asyncio.create_task(manager.step("cam", image_batch(4, 1)))
            await asyncio.sleep(0.05)
            old.lock.release()
            await delete
            if not auto_create:
                with pytest.raises(UnknownStreamError):
                    await step
                assert "cam" not in manager.streams
                return
            result = await step
            assert result.steps == 1 and manager.streams["cam"] is not old and manager.streams["cam"].online.steps == 1
        finally:
            manager.close()

    asyncio.run(main())


def test_racing_predicts_resets_and_deletes_never_answer_a_predict_with_404_or_anything_with_5xx() -> None:
    settings = Settings(default_adapter="tent", min_adapt_batch=4, max_delay_ms=5)
    bodies = [files(images(4, seed)) for seed in range(4)]

    async def main(url: str) -> Counter[tuple[str, int]]:
        rng = random.Random(0)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:

            async def one(kind: str, stream: str) -> tuple[str, int]:
                if kind == "predict":
                    body = rng.choice(bodies)
                    response = await client.post("/v1/predict", files=body, headers={"X-Stream-Id": stream})
                elif kind == "reset":
                    response = await client.post(f"/v1/streams/{stream}/reset")
                else:
                    response = await client.delete(f"/v1/streams/{stream}")
                return kind, response.status_code

            kinds = ["predict"] * 6 + ["reset", "delete"]
            calls = [one(rng.choice(kinds), f"s{rng.randrange(3)}") for _ in range(240)]
            return Counter(await asyncio.gather(*calls))

    with running_server(settings) as url:
        seen = asyncio.run(main(url))
    assert {code for (kind, code) in seen if kind == "predict"} == {200}, seen
    assert {code for _, code in seen} <= {200, 204, 404}, seen  # a reset or delete of a deleted stream: 404
    assert seen[("delete", 204)] > 0  # deletes did overtake queued predicts
