"""Stopping a child process: a child that ignores SIGTERM is killed after the grace period."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from benchmarks.performance.processes import stop_process

IGNORES_SIGTERM = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(600)\n"
)


def _child(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None and process.stdout.readline() == b"ready\n"  # its handler is in place
    return process


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    process = _child(IGNORES_SIGTERM)
    start = time.monotonic()
    assert stop_process(process, grace_s=1.0) is False
    assert 1.0 <= time.monotonic() - start < 30
    assert process.returncode == -signal.SIGKILL


def test_a_child_that_exits_on_sigterm_is_not_killed() -> None:
    process = _child("import time\nprint('ready', flush=True)\ntime.sleep(600)\n")
    assert stop_process(process, grace_s=30) is True
    assert process.returncode == -signal.SIGTERM
    assert stop_process(process, grace_s=30) is True  # already gone: nothing to do
