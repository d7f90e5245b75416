"""What the stream manager raises; the routes map each to one HTTP status."""

from __future__ import annotations


class StreamLimitError(RuntimeError):
    """No room for another stream (503, retry later)."""


class MemoryBudgetError(StreamLimitError):
    """A step's working memory or a stream's state does not fit the memory budget (503)."""


class StreamExistsError(RuntimeError):
    """A stream with that id exists already (409)."""


class UnknownStreamError(KeyError):
    """No stream with that id (404)."""


class InvalidStreamIdError(ValueError):
    """A stream id outside the grammar of :mod:`tta_server.streams.ids` (400)."""


class SnapshotError(RuntimeError):
    """A snapshot that is missing (404) or does not fit this server's model or config (409)."""


class SnapshotsDisabledError(SnapshotError):
    """The server runs without ``snapshot_dir``."""


class MissingSnapshotError(SnapshotError):
    """No snapshot of that stream."""


class DamagedSnapshotError(SnapshotError):
    """A snapshot that failed verification; it was moved to the quarantine folder."""
