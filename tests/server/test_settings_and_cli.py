"""Settings from env, files and flags; `tta-server serve` starts the real server."""

from __future__ import annotations

import json
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


def test_serve_command_starts_the_server_and_logs_only_json_lines(tmp_path: Path) -> None:
    """With ``--log-format json`` every line the process writes is a JSON object, also while it
    profiles a new adapter config's working memory for the budget (torch's C++ side prints there
    unless told not to)."""
    port = free_port()
    env = {**os.environ, "TTA_DEFAULT_ADAPTER": "norm"}
    for name in ("TORCH_CPP_LOG_LEVEL", "KINETO_LOG_LEVEL"):
        env.pop(name, None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tta_server.cli",
            "serve",
            "--port",
            str(port),
            "--log-format",
            "json",
            "--memory-budget-bytes",
            "4000000000",
            "--snapshot-dir",
            str(tmp_path),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.2)
        created = httpx.post(f"{base}/v1/streams", json={"stream_id": "cam", "adapter": "tent"}, timeout=30)
        assert created.status_code == 201, created.text
        image = (REPO / "examples" / "cat.png").read_bytes()
        answer = httpx.post(
            f"{base}/v1/predict", files=[("files", ("cat.png", image))], headers={"X-Stream-Id": "cam"}, timeout=60
        )
        assert answer.status_code == 200, answer.text
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    lines = [line for line in output.splitlines() if line.strip()]
    not_json = [line for line in lines if not _is_json_object(line)]
    assert not not_json, not_json
    messages = [json.loads(line)["message"] for line in lines]
    assert sum("working memory of" in message for message in messages) == 2, messages  # norm, then tent


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_serve_refuses_an_unknown_adapter_at_start() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tta_server.cli", "serve", "--port", str(free_port()), "--adapter", "nope"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = result.stderr.strip().splitlines()  # one line, before the model loads: no traceback
    assert result.returncode == 1 and len(lines) == 1
    assert lines[0].startswith("tta-server: invalid settings: unknown adapter 'nope'; registered: cotta")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "resnet-50"], "unknown model 'resnet-50'; registered: cifar10-airbench"),
        (["--model-kwargs", '{"checkpoint": "x.pt"}'], "model_kwargs for model 'cifar10-airbench': got an unexpected"),
        (["--model", "onnx", "--model-kwargs", '{"path": "m.onnx"}'], "missing a required argument: 'input_size'"),
        (
            ["--default-adapter-config", '{"optimizer": {"lr": -1}}'],
            "for 'tent': optimizer.lr: Input should be greater",
        ),
    ],
)
def test_serve_names_a_wrong_model_or_adapter_option_in_one_line_before_loading(flags: list[str], message: str) -> None:
    from tta_server.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "0", *flags])
    assert str(exited.value).startswith("tta-server: invalid settings: ") and "\n" not in str(exited.value)
    assert message in str(exited.value)


@pytest.mark.parametrize(
    ("model", "kwargs", "message"),
    [
        ("cifar10-airbench", {"weights_dir": "{tmp}"}, "metadata.json not found; train the model"),
        ("wrn28-10-cifar10", {"checkpoint": "{tmp}/damaged.safetensors"}, "not a readable safetensors file"),
        ("wrn28-10-cifar10", {"checkpoint": "{tmp}/absent.pt"}, "checkpoint not found"),
    ],
)
def test_serve_names_a_model_that_cannot_load_in_one_line(
    tmp_path: Path, model: str, kwargs: dict[str, str], message: str
) -> None:
    from tta_server.cli import main

    (tmp_path / "damaged.safetensors").write_bytes(b"\x00" * 64)
    arguments = json.dumps({k: v.replace("{tmp}", str(tmp_path)) for k, v in kwargs.items()})
    with pytest.raises(SystemExit) as exited:  # before uvicorn: not a lifespan traceback with exit 3
        main(["serve", "--port", "0", "--model", model, "--model-kwargs", arguments])
    assert str(exited.value).startswith("tta-server: cannot start: ") and "\n" not in str(exited.value)
    assert message in str(exited.value)


def test_a_budget_no_request_could_fit_in_is_refused_at_start(tmp_path: Path) -> None:
    from tta_server.app import build_services

    settings = Settings(snapshot_dir=tmp_path, memory_budget_bytes=400_000)
    with pytest.raises(ValueError) as refused:  # else it would serve, and answer every request with 503
        build_services(settings)  # tta-server serve prints this as "tta-server: cannot start: ..."
    message = str(refused.value)
    assert message.startswith("memory_budget_bytes=400000 cannot hold a single step")
    assert "default adapter 'tent' needs" in message and "min_adapt_batch=16" in message and "\n" not in message


def test_serve_runs_uvicorn_with_the_head_deadline() -> None:
    from tta_server.cli import uvicorn_config
    from tta_server.http_protocol import HeadDeadlineProtocol

    config = uvicorn_config(Settings(request_head_timeout_s=7.5))
    assert isinstance(config.http, type) and issubclass(config.http, HeadDeadlineProtocol)
    assert config.http.head_timeout_s == 7.5
