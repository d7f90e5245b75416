"""What the stream manager raises; the routes map each to one HTTP status."""

from __future__ import annotations


class StreamLimitError(RuntimeError):
    """No room for another stream (503, retry later)."""


class MemoryBudgetError(StreamLimitError):
    """A step's working memory or a stream's state does not fit the memory budget (503)."""


class StepTooLargeError(RuntimeError):
    """A step's working memory and the stream's state exceed the whole memory budget: no wait or
    retry can help (413)."""


class StreamOwnedError(StreamLimitError):
    """Another live replica owns the stream and did not hand it over in time (503, retry)."""

    def __init__(self, stream_id: str, owner: str, asked: bool = True) -> None:
        if asked:
            then = "it was asked to hand it over (retry shortly, and route each X-Stream-Id to one replica)"
        else:  # a read, or a request the balancer did not route by this stream: it must not move the stream
            then = (
                "a read, or a request without its own X-Stream-Id header, does not move it (send the header "
                f"X-Stream-Id: {stream_id}, which routes it there)"
            )
        super().__init__(f"stream {stream_id!r} is active on replica {owner!r}; {then}")
        self.stream_id, self.owner, self.asked = stream_id, owner, asked


class LostOwnershipError(RuntimeError):
    """This replica's lease on a stream was taken over: its copy must not be written."""


class StreamExistsError(RuntimeError):
    """A stream with that id exists already (409)."""


class UnknownStreamError(KeyError):
    """No stream with that id (404)."""


class InvalidStreamIdError(ValueError):
    """A stream id outside the grammar of :mod:`tta_server.streams.ids` (400)."""


class SnapshotError(RuntimeError):
    """A snapshot that is missing (404) or does not fit this server's model or config (409)."""


class SnapshotDeleteError(SnapshotError):
    """A deleted stream's snapshot could not be removed; the stream is kept (503, retry)."""


class SnapshotsDisabledError(SnapshotError):
    """The server runs without ``snapshot_dir``."""


class MissingSnapshotError(SnapshotError):
    """No snapshot of that stream."""


class DamagedSnapshotError(SnapshotError):
    """A snapshot that failed verification; it was moved to the quarantine folder."""
