"""What the Dockerfile installs, without a container: the project built as a wheel, installed into
a clean virtual environment, and `tta-server serve` from it answering the health routes."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import httpx

from tests.conftest import REPO
from tests.server_harness import free_port


def test_the_wheel_installs_into_a_clean_venv_and_serves(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        check=True,
    )
    (wheel,) = wheels.glob("tta_server-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("adapters/models/weights/") and n.endswith(".safetensors") for n in names)
    assert not any(n.startswith(("tests/", "monitoring/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    # the wheel alone into the clean venv (pip, as the Dockerfile does); its dependencies come from
    # this environment's site-packages, appended, so the wheel's copy of the project wins
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True)
    Path(purelib, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run(
        [python, "-c", "import tta_server, adapters; print(tta_server.__file__, adapters.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout
    assert where.count(purelib) == 2, where

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTA_")}
    env.update(TTA_PORT=str(port), TTA_CACHE_DIR=str(tmp_path / "cache"), TTA_SNAPSHOT_DIR=str(tmp_path / "snapshots"))
    server = subprocess.Popen(
        [venv / "bin" / "tta-server", "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.communicate()[0]
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the installed server did not become ready in 120 s"
            time.sleep(0.5)
        assert ready.json()["status"] == "ready"
        assert httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=5).json()["status"] == "live"
    finally:
        server.terminate()
        server.wait(timeout=60)
