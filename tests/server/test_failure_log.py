"""Failures retried on every background pass are logged when they start, change, recur and clear."""

from __future__ import annotations

import logging

import pytest

from tta_server.streams.failure_log import FailureLog


def test_a_recurring_failure_is_logged_when_it_starts_changes_recurs_and_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    log = FailureLog(logging.getLogger("test.failures"), repeat_s=60.0, clock=lambda: now[0])
    full = OSError(28, "No space left on device")
    with caplog.at_level(logging.INFO, logger="test.failures"):
        for _ in range(10):  # one pass a second
            log.failed("b", "snapshot", full)
            log.failed("c", "snapshot", full)
            now[0] += 1.0
        log.failed("b", "snapshot", PermissionError("read-only file system"))  # another reason
        now[0] = 70.0
        log.failed("c", "snapshot", full)  # 70 s after it started: a reminder with the count
        log.failed("c", "snapshot", full)
        log.cleared("b", "snapshot", "spill")
        log.cleared("b", "snapshot")  # already cleared: nothing more to say
        log.forget("c", "snapshot")
        log.failed("c", "snapshot", full)  # after forget it is new again
    assert [r.getMessage() for r in caplog.records] == [
        "stream b: snapshot failed: [Errno 28] No space left on device",
        "stream c: snapshot failed: [Errno 28] No space left on device",
        "stream b: snapshot failed: read-only file system",
        "stream c: snapshot still failing (11 times in 70 s): [Errno 28] No space left on device",
        "stream b: snapshot succeeded after 1 failure(s) over 60 s",
        "stream c: snapshot failed: [Errno 28] No space left on device",
    ]
    assert [r.levelname for r in caplog.records] == ["ERROR"] * 4 + ["INFO", "ERROR"]
    assert set(log.ongoing) == {("c", "snapshot")}


def test_failures_differing_only_in_their_temporary_file_are_one(caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("test.failures"))
    with caplog.at_level(logging.INFO, logger="test.failures"):
        for name in ("tmpttIExq", "tmprWPyjF", "tmp6VkS2W"):  # as the safetensors writer words it
            error = RuntimeError(f'Error while serializing: I/O error: Read-only file system at path "/snaps/.{name}"')
            log.failed("s0", "spill", error, ", kept in memory")
        log.failed("s0", "spill", RuntimeError("Error while serializing: I/O error: No space left on device"))
    assert [r.getMessage() for r in caplog.records] == [
        "stream s0: spill failed, kept in memory: Error while serializing: I/O error: Read-only file system "
        'at path "/snaps/.tmpttIExq"',
        "stream s0: spill failed: Error while serializing: I/O error: No space left on device",
    ]
    assert log.ongoing[("s0", "spill")].count == 1
