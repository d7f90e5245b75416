"""Child processes of the benchmarks and the monitoring harness: a free loopback port, a process'
resident memory, and a stop that cannot leave the child running."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def resident_bytes(pid: int, key: str = "VmRSS") -> int:
    """A process' resident memory now (``VmRSS``) or at its peak (``VmHWM``), from ``/proc``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} for process {pid}")


def stop_process(process: subprocess.Popen[bytes], grace_s: float) -> bool:
    """SIGTERM, then SIGKILL if the process has not exited after ``grace_s``; it has exited on return.

    Never raises for a slow exit, so the caller's clean-up after it (a temporary directory the
    child wrote to) always runs. Returns whether the process exited on SIGTERM alone."""
    if process.poll() is not None:
        return True
    process.terminate()
    try:
        process.wait(timeout=grace_s)
        return True
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
