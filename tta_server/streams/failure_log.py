"""Failures that recur on every background pass, logged when they start, change and clear.

A full or read-only disk fails every stream's snapshot on every pass: one line per stream and pass
would bury everything else in the log (a thousand streams, a line each second). A failure is
logged once when it starts or its reason changes, again every ``repeat_s`` with how often it
recurred, and once when it clears. The metrics still count every failure.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

WRITE_OPERATIONS = ("snapshot", "spill", "snapshot delete")  # writes that can keep failing
_QUOTED = re.compile(r"(['\"]).*?\1")
_PATHS = re.compile(r"/\S+")


def _kind(exc: BaseException) -> str:
    """What makes two failures the same: an OSError's errno, else its message without the quoted
    strings and paths in it (each attempt writes to a temporary file of another name)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}:{exc.errno}"
    return f"{type(exc).__name__}:" + _PATHS.sub("_", _QUOTED.sub("_", str(exc)))


@dataclass
class _Ongoing:
    kind: str
    since: float
    logged_at: float
    count: int = 1


class FailureLog:
    def __init__(
        self, logger: logging.Logger, repeat_s: float = 300.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger, self.repeat_s, self.clock = logger, repeat_s, clock
        self.ongoing: dict[tuple[str, str], _Ongoing] = {}  # (stream id, what failed)
        self._lock = threading.Lock()  # writes succeed on worker threads, failures are seen on the loop

    def failed(self, stream_id: str, what: str, exc: BaseException, consequence: str = "") -> None:
        reason, kind, now = str(exc) or type(exc).__name__, _kind(exc), self.clock()
        with self._lock:
            entry = self.ongoing.get((stream_id, what))
            if entry is None or entry.kind != kind:
                self.ongoing[(stream_id, what)] = _Ongoing(kind, since=now, logged_at=now)
                line = f"stream {stream_id}: {what} failed{consequence}: {reason}"
            else:
                entry.count += 1
                if now - entry.logged_at < self.repeat_s:
                    return
                entry.logged_at = now
                line = (
                    f"stream {stream_id}: {what} still failing ({entry.count} times in {now - entry.since:.0f} s)"
                    f"{consequence}: {reason}"
                )
        self.logger.error("%s", line)

    def cleared(self, stream_id: str, *whats: str) -> None:
        """The operations succeeded again: say so once for each that was failing."""
        for what in whats:
            with self._lock:
                entry = self.ongoing.pop((stream_id, what), None)
            if entry is not None:
                self.logger.info(
                    "stream %s: %s succeeded after %d failure(s) over %.0f s",
                    stream_id, what, entry.count, self.clock() - entry.since,
                )  # fmt: skip

    def failing(self, *whats: str) -> dict[str, int]:
        """How many streams each of ``whats`` is failing for now."""
        with self._lock:
            return {what: sum(1 for _, w in self.ongoing if w == what) for what in whats}

    def forget(self, stream_id: str, *whats: str) -> None:
        """The stream is gone here: what failed for it no longer matters (and must not pile up)."""
        with self._lock:
            for what in whats:
                self.ongoing.pop((stream_id, what), None)
