"""Per-stream adapter state: ids, the snapshot store, the memory budget, batching, persistence."""

from tta_server.streams.errors import (
    DamagedSnapshotError,
    InvalidStreamIdError,
    MemoryBudgetError,
    MissingSnapshotError,
    SnapshotDeleteError,
    SnapshotError,
    SnapshotsDisabledError,
    StepTooLargeError,
    StreamExistsError,
    StreamLimitError,
    StreamOwnedError,
    UnknownStreamError,
)
from tta_server.streams.ids import STREAM_ID_PATTERN, stream_id_for_sequence, validate_stream_id
from tta_server.streams.manager import StreamManager
from tta_server.streams.persistence import Persistence
from tta_server.streams.store import SnapshotStore
from tta_server.streams.stream import Stream, StreamOptions

__all__ = [
    "STREAM_ID_PATTERN",
    "DamagedSnapshotError",
    "InvalidStreamIdError",
    "MemoryBudgetError",
    "MissingSnapshotError",
    "Persistence",
    "SnapshotDeleteError",
    "SnapshotError",
    "SnapshotStore",
    "SnapshotsDisabledError",
    "StepTooLargeError",
    "Stream",
    "StreamExistsError",
    "StreamLimitError",
    "StreamManager",
    "StreamOptions",
    "StreamOwnedError",
    "UnknownStreamError",
    "stream_id_for_sequence",
    "validate_stream_id",
]
