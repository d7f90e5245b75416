"""Freed stream memory goes back to the system (glibc malloc_trim), only when streams left memory."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from benchmarks.performance.processes import resident_bytes
from tta_server.streams.native_memory import FreedMemory


def _rss_bytes() -> int:
    return resident_bytes(os.getpid())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_pages_freed_by_many_small_tensors_are_returned() -> None:
    freed = FreedMemory()
    assert freed.available and not freed.trim()  # nothing left memory: no trim
    before = _rss_bytes()
    held = [torch.ones(16 * 1024) for _ in range(8 * 1024)]  # 512 MiB in 64 KiB blocks: heap, not mmap
    keep = held[::1024]  # a few survivors pin the heap's top, so only a trim gives the pages back
    del held
    grown = _rss_bytes()
    freed.freed("cam")
    assert freed.trim() and freed.trims == 1 and freed.pending == 0
    assert _rss_bytes() < grown - 256 * 2**20, (before, grown, _rss_bytes())
    assert keep
