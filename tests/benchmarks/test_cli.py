"""``tta-bench`` explains itself: every command and option has help, outputs go to run folders,
option combinations that would be ignored are refused."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from benchmarks.cli import build_parser, main


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_command_and_option_has_help() -> None:
    commands = subcommands()
    assert len(commands) == 18
    help_text = build_parser().format_help()
    assert all(name in help_text for name in commands)
    undocumented = [
        f"{name} {action.option_strings or action.dest}"
        for name, parser in commands.items()
        if name != "train-source"  # its own parser, checked below
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not action.help
    ]
    assert not undocumented, undocumented


def test_benchmark_outputs_default_to_a_run_folder_not_the_committed_results() -> None:
    for name, parser in subcommands().items():
        out = next((a for a in parser._actions if a.dest == "out"), None)
        if out is not None and out.default is not None and not out.required:
            assert Path(out.default).parts[0] == "runs", (name, out.default)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--server", "http://127.0.0.1:9", "--orders", "cotta10"], "runs in process only"),
        (["--server", "http://127.0.0.1:9", "--device", "cuda"], "its own device"),
        (["--server", "http://127.0.0.1:9", "--signal-precision", "bf16"], "its own signal_precision"),
        (["--delta", "0.1"], "--setting correlated only"),
        (["--visits", "3"], "--setting recurring only"),
        (["--preprocessing", "resize-crop"], "imagenet-c only"),
        (["--adapters", "tent", "--adapter-config", '{"cotta": {}}'], "not in --adapters"),
    ],
)
def test_replay_refuses_options_it_would_ignore(extra: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["replay", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--adapters", "tent,tent-slow"], "'tent-slow' is no adapter"),
        (["--variants", "sometimes"], "--variants: unknown sometimes"),
        (["--streams", "recurring,endless"], "--streams: unknown endless"),
    ],
)
def test_long_streams_refuses_unknown_labels_and_variants_before_replaying(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["long-streams", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()  # refused before any run started


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--streams", "continual,endless"], "--streams: unknown endless"), (["--adapters", "tent,tnet"], "unknown tnet")],
)
def test_signal_precision_refuses_unknown_streams_and_adapters_before_replaying(
    extra: list[str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["signal-precision", "--data", str(tmp_path), "--out", str(tmp_path / "out"), *extra])
    assert not (tmp_path / "out").exists()


def test_user_errors_end_in_one_line_naming_the_command_not_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    cases = [
        (
            ["replay", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out")],
            "gaussian_noise.npy not found",
        ),
        (["report", str(tmp_path / "nothing.json")], "nothing.json"),
        (["report", str(tmp_path / "damaged.json")], "damaged.json is not a replay results file"),
        (["report", str(tmp_path / "list.json")], "list.json is not a replay results file"),
    ]
    (tmp_path / "damaged.json").write_text('{"runs": [')
    (tmp_path / "list.json").write_text("[]")
    for argv, message in cases:
        with pytest.raises(SystemExit, match=f"tta-bench {argv[0]}: .*{message}"):
            main(argv)
    run = subprocess.run(
        [sys.executable, "-c", "from benchmarks.cli import main; main()", *cases[0][0]], capture_output=True, text=True
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr and cases[0][1] in run.stderr
