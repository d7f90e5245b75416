"""Atomic file writes, written once: a temporary file beside the target, fsync, rename, fsync the directory.

A crash (even SIGKILL or power loss) leaves either the old or the new file, never a torn one::

    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp))
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path, durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``target``'s directory; on success it replaces ``target``.

    The temporary name starts with a dot and ends with ``.partial`` (left-overs of a crash are
    recognisable); on failure it is removed. ``durable`` fsyncs the file and the directory."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        yield tmp
        if durable:
            with tmp.open("rb") as handle:
                os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_directory(target.parent)


def atomic_write_text(target: Path, text: str, durable: bool = True) -> None:
    with atomic_path(target, durable) as tmp:
        tmp.write_text(text)
