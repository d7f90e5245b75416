"""A snapshot store on a really full disk (a small tmpfs): new streams are refused with a 503 that
names the store, readiness fails, nothing half-written is left, and all recovers once there is room."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import png
from tests.server_harness import running_server
from tta_server import Settings

DISK_KIB = 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("mount") is None:
        pytest.skip("no mount command here to make a small tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_KIB}k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _files(seed: int) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"{i}.png", png(seed * 4 + i), "image/png")) for i in range(4)]


def _wait_for(condition: object, timeout_s: float = 20) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_a_full_disk_refuses_new_streams_by_name_and_recovers_when_room_comes_back(
    small_disk: Path, tmp_path: Path
) -> None:
    base = Settings(default_adapter="tent", min_adapt_batch=4)
    # a budget makes the server measure working memory; this one is never reached
    roomy = base.model_copy(update={"memory_budget_bytes": 2**32, "snapshot_dir": tmp_path / "roomy"})
    with running_server(roomy) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/predict", files=_files(0), headers={"X-Stream-Id": "probe"}).raise_for_status()
        memory = client.get("/v1/memory").json()
    state, working = memory["state_bytes"], memory["working_memory"][0]["small_bytes"]
    disk_streams = DISK_KIB * 1024 // state  # about as many snapshots as the disk holds
    settings = base.model_copy(
        update={
            "snapshot_dir": small_disk,
            "memory_budget_bytes": working + 6 * state,  # a few streams in memory, the rest must spill
            "snapshot_interval_s": 0.5,
            "persistence_failure_grace_s": 1.0,
        }
    )
    streams = 2 * disk_streams + 12
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=60) as client:

        def post(i: int) -> httpx.Response:
            return client.post("/v1/predict", files=_files(i), headers={"X-Stream-Id": f"cam-{i}"})

        answers = [post(i) for i in range(streams)]
        refused = [a for a in answers if a.status_code != 200]
        assert refused, "the disk never filled"
        for answer in refused:
            assert answer.status_code == 503 and answer.json()["error"]["code"] == "memory_budget", answer.text
            assert "could not be written to the snapshot store" in answer.json()["error"]["message"]
        assert _wait_for(lambda: client.get("/health/ready").status_code == 503)
        assert client.get("/health/ready").json()["status"] == "persistence_failing"
        persistence = client.get("/v1/persistence").json()
        assert "No space left on device" in persistence["last_error"] and persistence["failures"]["spill_failures"]
        assert client.get("/health/live").status_code == 200
        assert not list(small_disk.glob(".*.partial")), "half-written snapshots were left on the full disk"

        subprocess.run(["mount", "-o", f"remount,size={8 * DISK_KIB}k", str(small_disk)], check=True)
        assert _wait_for(lambda: client.get("/health/ready").status_code == 200)
        again = [post(i) for i in range(streams)]
        assert [a.status_code for a in again] == [200] * streams, [a.text for a in again if a.status_code != 200]
        assert client.get("/v1/streams/cam-0").json()["steps"] == 2  # its first step survived the spill
