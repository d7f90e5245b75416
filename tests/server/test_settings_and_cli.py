"""Settings from env, files and flags; `tta-server serve` starts the real server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from tests.server_harness import free_port
from tta_server import Settings

REPO = Path(__file__).resolve().parents[2]


def test_env_and_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "server.yaml"
    file.write_text("default_adapter: norm\ntop_k: 3\nport: 9000\n")
    monkeypatch.setenv("TTA_PORT", "9100")
    settings = Settings(config_file=file)
    assert (settings.default_adapter, settings.top_k, settings.port) == ("norm", 3, 9100)  # env beats file


def test_invalid_settings_name_the_field() -> None:
    with pytest.raises(ValidationError, match="top_k"):
        Settings(top_k=0)
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(no_such_setting=1)  # type: ignore[call-arg]


def test_serve_command_starts_the_server() -> None:
    port = free_port()
    env = {**os.environ, "TTA_DEFAULT_ADAPTER": "norm"}
    process = subprocess.Popen(
        [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(port), "--log-level", "warning"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_an_unknown_adapter_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(free_port()), "--adapter", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "unknown adapter 'nope'" in result.stdout + result.stderr
