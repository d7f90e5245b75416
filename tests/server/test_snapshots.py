"""Stream snapshots: atomic files, restore on request, on shutdown and at start, on the real server."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.helpers import damage_inside, png
from tests.server_harness import running_server
from tta_server import Settings
from tta_server.streams import SnapshotStore
from tta_server.streams.snapshot_file import file_name


def predict(client: httpx.Client, stream: str, seed: int) -> list[dict[str, float]]:
    files = [("files", (f"{i}.png", png(seed * 10 + i), "image/png")) for i in range(4)]
    response = client.post("/v1/predict", files=files, headers={"X-Stream-Id": stream})
    assert response.status_code == 200, response.text
    return [p["top_k"] for p in response.json()["predictions"]]


def settings(directory: Path) -> Settings:
    return Settings(default_adapter="norm", min_adapt_batch=4, snapshot_dir=directory)


def test_restore_rewinds_a_stream_exactly(tmp_path: Path) -> None:
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/streams", json={"stream_id": "cam", "adapter": "tent"}).status_code == 201
        predict(client, "cam", 1)
        saved = client.post("/v1/streams/cam/snapshot").json()
        assert saved["steps"] == 1 and Path(saved["path"]).is_file()
        after_snapshot = predict(client, "cam", 2)
        predict(client, "cam", 3)
        restored = client.post("/v1/streams/cam/restore").json()
        assert restored["steps"] == 1 and restored["adapter"] == "tent"
        assert predict(client, "cam", 2) == after_snapshot
        assert client.post("/v1/streams/nope/restore").json()["error"]["code"] == "snapshot_missing"


def test_streams_survive_a_restart(tmp_path: Path) -> None:
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        client.post("/v1/streams", json={"stream_id": "site-a", "adapter": "tent", "config": {"seed": 5}})
        predict(client, "site-a", 1)
        predict(client, "site-a", 2)
        next_answer = predict(client, "site-a", 3)
    # the shutdown wrote a snapshot after the third step; a new server restores it at start
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        info = client.get("/v1/streams/site-a").json()
        assert info["steps"] == 3 and info["adapter"] == "tent" and info["config"]["seed"] == 5
        assert predict(client, "site-a", 4) != next_answer  # alive and adapting


def test_a_broken_snapshot_is_quarantined_at_start(tmp_path: Path) -> None:
    (tmp_path / file_name("broken")).write_bytes(b"not a snapshot")
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health/ready").status_code == 200
        assert client.get("/v1/streams/broken").status_code == 404
        report = client.get("/v1/persistence").json()
        assert report["quarantined"] == 1 and "unreadable" in report["quarantined_files"][0]["reason"]
        assert client.post("/v1/streams/broken/restore").json()["error"]["code"] == "snapshot_missing"
    assert not (tmp_path / file_name("broken")).exists() and len(list((tmp_path / "quarantine").iterdir())) == 2


def test_a_snapshot_damaged_inside_is_found_after_start_not_by_the_request_that_wakes_it(tmp_path: Path) -> None:
    import time

    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        for stream in ("sound", "rotten"):
            client.post("/v1/streams", json={"stream_id": stream, "adapter": "tent"})
            predict(client, stream, 1)
    damage_inside(tmp_path / file_name("rotten"))
    unchecked = settings(tmp_path).model_copy(update={"verify_restored_snapshots": False})
    with running_server(unchecked) as url, httpx.Client(base_url=url, timeout=60) as client:
        report = client.get("/v1/persistence").json()
        assert report["quarantined"] == 0  # headers only: it looks sound
        assert report["verification"] | {"seconds": 0} == {
            "enabled": False,
            "total": 0,
            "verified": 0,
            "quarantined": 0,
            "skipped": 0,
            "finished": True,
            "seconds": 0,
            "passes": 0,
        }
        woken = client.get("/v1/streams/rotten")
        assert woken.status_code == 409 and woken.json()["error"]["code"] == "snapshot_damaged"
    (tmp_path / "quarantine").rename(tmp_path / "first-quarantine")
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        for stream in ("sound", "rotten"):
            predict(client, stream, 2)  # rotten was lost above: a new stream
    damage_inside(tmp_path / file_name("rotten"))
    with running_server(settings(tmp_path)) as url, httpx.Client(base_url=url, timeout=60) as client:
        deadline = time.monotonic() + 30
        while not (report := client.get("/v1/persistence").json())["verification"]["finished"]:
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        assert report["verification"] | {"seconds": 0} == {
            "enabled": True,
            "total": 2,
            "verified": 1,
            "quarantined": 1,
            "skipped": 0,
            "finished": True,
            "seconds": 0,
            "passes": 0,
        }
        assert report["quarantined"] == 1 and "checksum mismatch" in report["quarantined_files"][0]["reason"]
        assert client.get("/v1/streams/rotten").status_code == 404  # forgotten: no request had to find it
        assert client.get("/v1/streams/sound").json()["steps"] == 2
        metrics = client.get("/metrics").text
        assert "tta_snapshots_verified_total 1.0" in metrics and "tta_quarantined_snapshots 1.0" in metrics


def test_snapshots_need_a_directory() -> None:
    with running_server(Settings(default_adapter="norm")) as url, httpx.Client(base_url=url, timeout=60) as client:
        predict(client, "x", 1)
        assert client.post("/v1/streams/x/snapshot").json()["error"]["code"] == "snapshots_disabled"


def test_a_sigkilled_server_restarts_with_its_periodic_snapshots(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.server_harness import free_port

    def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {
            **os.environ,
            "TTA_SNAPSHOT_DIR": str(tmp_path),
            "TTA_SNAPSHOT_INTERVAL_S": "0.2",
            "TTA_MIN_ADAPT_BATCH": "4",
        }
        command = [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(port), "--adapter", "norm"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                    return process, url
            except httpx.HTTPError:
                time.sleep(0.2)
        process.kill()
        raise TimeoutError("server did not start")

    process, url = start()
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.post("/v1/streams", json={"stream_id": "kept", "adapter": "tent"})
            for seed in range(3):
                predict(client, "kept", seed)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # until a periodic snapshot holds all three steps
                store = SnapshotStore(tmp_path)
                if store.exists("kept") and store.read("kept")["steps"] == 3:
                    break
                time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)  # no shutdown hook runs
        process.wait()
    process, url = start()
    try:
        info = httpx.get(f"{url}/v1/streams/kept", timeout=60).json()
        assert info["adapter"] == "tent" and info["steps"] == 3
    finally:
        process.terminate()
        process.wait()


def test_the_periodic_check_finds_a_file_damaged_while_the_server_runs(tmp_path: Path) -> None:
    import time

    periodic = settings(tmp_path).model_copy(update={"idle_timeout_s": 0.2, "verify_snapshots_interval_s": 0.2})
    with running_server(periodic) as url, httpx.Client(base_url=url, timeout=60) as client:
        predict(client, "rotting", 1)
        deadline = time.monotonic() + 30
        while client.get("/v1/memory").json()["streams_spilled"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)  # idle expiry spills it
        damage_inside(tmp_path / file_name("rotting"))
        while (report := client.get("/v1/persistence").json())["quarantined"] != 1:
            assert time.monotonic() < deadline, report
            time.sleep(0.05)
        assert report["verification"]["passes"] >= 1 and "checksum mismatch" in report["quarantined_files"][0]["reason"]
        assert client.get("/v1/streams/rotting").status_code == 404  # forgotten, as a wake would
        assert "tta_quarantined_snapshots 1.0" in client.get("/metrics").text
