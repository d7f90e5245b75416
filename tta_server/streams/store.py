"""The snapshot store: stream ids -> files in one directory, written atomically, verified on read.

* File names are ``<sha256(stream id)[:32]>.safetensors``: they never escape the directory and
  never coincide for distinct ids (nor on case-insensitive file systems); the id itself is
  recorded in the file and checked on read.
* Writes go through :func:`adapters.atomic.atomic_path` (temporary file, fsync, rename, fsync
  of the directory).
* Every file carries a SHA-256 of its tensors and metadata; a file that is unreadable, fails its
  checksum, holds non-finite tensors or names another stream is moved to ``quarantine/`` with a
  ``.reason.txt`` beside it, logged and counted (``report()``), and never loaded. Start-up checks
  headers only (``scan(headers_only=True)``); a file is verified in full when it is read, and
  :meth:`SnapshotStore.check` verifies one without reading it whole (the background check after
  start, :mod:`.verification`).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from adapters import AdapterError
from adapters.atomic import atomic_path, atomic_write_text
from adapters.online_state import BUFFER_PREFIX
from adapters.state_io import decode_header, decode_state, encode_state
from tta_server.streams.errors import DamagedSnapshotError, InvalidStreamIdError, MissingSnapshotError
from tta_server.streams.feedback import FeedbackTotals
from tta_server.streams.ids import validate_stream_id
from tta_server.streams.snapshot_file import (
    FILE_FORMAT,
    SUFFIX,
    FileTensors,
    check_content,
    checksum,
    file_name,
    file_signature,
    identity,
    load,
)

logger = logging.getLogger(__name__)
PENDING_KEY = BUFFER_PREFIX + "pending"  # the images a stream holds for its next step
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class QuarantinedFile:
    file: str
    reason: str
    at: float


class SnapshotStore:
    """One directory of stream snapshots (a local or a shared, ReadWriteMany, volume)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.quarantined: list[QuarantinedFile] = []
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # writes will fail, be logged and counted; readiness follows
            logger.error("snapshot directory %s cannot be created: %s", directory, exc)

    def path(self, stream_id: str) -> Path:
        return self.directory / file_name(validate_stream_id(stream_id))

    def probe(self) -> None:
        """Write, sync and remove a small file (named per call: replicas may share the store);
        raises ``OSError`` when the store refuses writes (missing, read-only or full volume)."""
        self.directory.mkdir(parents=True, exist_ok=True)  # a volume mounted late is found then
        path = self.directory / f".write-probe.{uuid.uuid4().hex[:8]}.partial"  # a crash's left-over goes at start
        try:
            with path.open("wb") as handle:
                handle.write(b"tta-server write probe\n")
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            path.unlink(missing_ok=True)

    def exists(self, stream_id: str) -> bool:
        return self.path(stream_id).is_file()

    def write(self, stream_id: str, state: dict[str, Any]) -> Path:
        """Write a stream's state (``Stream.snapshot_state()``, or an ``OnlineStream.state_dict()``)
        atomically; returns the file."""
        from safetensors.torch import save_file

        target = self.path(stream_id)
        tensors, metadata = encode_state(state)
        metadata = {**metadata, "file_format": FILE_FORMAT, "stream_id": stream_id}
        if "feedback" in state:  # a stream's label-feedback totals
            metadata["feedback"] = json.dumps(state["feedback"], sort_keys=True)
        metadata["checksum"] = checksum(tensors, metadata)
        with atomic_path(target) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return target

    def read(self, stream_id: str) -> dict[str, Any]:
        """The verified state of ``stream_id``; a damaged file is quarantined and reported."""
        path = self.path(stream_id)
        if not path.is_file():
            raise MissingSnapshotError(f"no snapshot of stream {stream_id!r} in {self.directory}")
        return self._verified(path, stream_id)[1]

    def describe(self, stream_id: str) -> dict[str, Any] | None:
        """What a snapshot's header says (adapter, config, steps, buffered images, file size, written at) without
        reading its tensors or verifying them; None if the file is missing or its header unreadable
        (waking the stream verifies it and quarantines a damaged file)."""
        from safetensors import safe_open

        path = self.path(stream_id)
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                pending = PENDING_KEY in handle.keys()  # noqa: SIM118
                buffered = handle.get_slice(PENDING_KEY).get_shape()[0] if pending else 0
            stat = path.stat()
            config = json.loads(metadata["config"])
            described = {"adapter": metadata["adapter"], "config": config, "steps": int(metadata["steps"])}
            described["buffered_images"] = int(buffered)
        except Exception:  # missing, truncated or foreign: left out of listings, judged on wake
            return None
        if metadata.get("stream_id") != stream_id or not isinstance(config, dict):
            return None
        return {**described, "file_bytes": stat.st_size, "written_at": stat.st_mtime}

    def delete(self, stream_id: str) -> bool:
        """Remove the stream's snapshot; True if there was one."""
        try:
            self.path(stream_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def count(self) -> int:
        """How many snapshots the directory holds (one listing, no file opened)."""
        try:
            with os.scandir(self.directory) as entries:
                return sum(1 for e in entries if e.name.endswith(SUFFIX) and not e.name.startswith("."))
        except OSError:
            return 0

    def scan(
        self, reject: Callable[[dict[str, Any]], str | None] | None = None, headers_only: bool = False
    ) -> list[str]:
        """Every stream with a valid snapshot, verifying each file and removing left-over temporary
        files of an interrupted write. Damaged files, and those for which ``reject(state)`` gives a
        reason (another model, say), are quarantined. ``headers_only`` reads and checks each header
        alone (format, stream id, model, adapter and config, which ``reject`` sees) and leaves the
        tensors and checksum to :meth:`read`: a start-up over many large states then reads kilobytes,
        not the whole store."""
        if not self.directory.is_dir():
            return []
        for leftover in self.directory.glob(".*.partial"):
            leftover.unlink(missing_ok=True)
        found = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            try:
                stream_id, state = self._header(path) if headers_only else self._verified(path, None)
            except DamagedSnapshotError:
                continue  # quarantined and logged
            reason = reject(state) if reject else None
            if reason:
                self.quarantine(path, reason)
            else:
                found.append(stream_id)
        return found

    def report(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "quarantined": len(self.quarantined),
            "quarantined_files": [asdict(q) for q in self.quarantined[-100:]],
        }

    def _header(self, path: Path) -> tuple[str, dict[str, Any]]:
        """The stream id and the model, adapter and config a snapshot's header names (see :meth:`scan`)."""
        from safetensors import safe_open

        try:
            try:
                with safe_open(str(path), framework="pt") as handle:
                    metadata = dict(handle.metadata() or {})
            except Exception as exc:  # as in load()
                raise ValueError(f"unreadable ({type(exc).__name__}: {exc})") from exc
            stream_id = identity(path, metadata, None)
            header = decode_header(metadata)
        except (ValueError, AdapterError, InvalidStreamIdError) as exc:
            self.quarantine(path, str(exc))
            raise DamagedSnapshotError(f"snapshot {path.name} is damaged and was quarantined: {exc}") from exc
        return stream_id, header

    def check(self, stream_id: str) -> str | None:
        """What is wrong with the content of ``stream_id``'s snapshot (what :meth:`read` would
        quarantine it for), or None; nothing is moved. The file is hashed tensor by tensor through its
        memory map and no state is built. A file that cannot be opened, or that was replaced while it
        was checked, is no verdict (None): its read judges it."""
        path = self.path(stream_id)
        before = file_signature(path)
        problem = self._problem(path, stream_id)
        return None if problem is None or file_signature(path) != before else problem  # replaced: no verdict

    def _problem(self, path: Path, stream_id: str) -> str | None:
        from safetensors import safe_open

        try:
            with path.open("rb"):
                pass
        except OSError:
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                check_content(path, FileTensors(handle), metadata, stream_id)
            decode_header(metadata)
            _feedback_totals(metadata)
        except (ValueError, AdapterError, InvalidStreamIdError) as exc:
            return str(exc)
        except Exception as exc:  # safetensors' own errors for truncated or foreign files, as in load()
            return f"unreadable ({type(exc).__name__}: {exc})"
        return None

    def _verified(self, path: Path, expected_id: str | None) -> tuple[str, dict[str, Any]]:
        try:
            tensors, metadata, stream_id = _read_whole(path, expected_id)
            state = decode_state(tensors, metadata)
            totals = _feedback_totals(metadata)
            if totals is not None:
                state["feedback"] = totals
        except (ValueError, AdapterError, InvalidStreamIdError, OSError) as exc:
            self.quarantine(path, str(exc))
            raise DamagedSnapshotError(f"snapshot {path.name} is damaged and was quarantined: {exc}") from exc
        return stream_id, state

    def quarantine(self, path: Path, reason: str) -> None:
        """Move ``path`` aside with its reason (logged and counted); it is never loaded again."""
        self.quarantined.append(QuarantinedFile(path.name, reason, time.time()))
        target = self.directory / QUARANTINE / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
        try:
            target.parent.mkdir(exist_ok=True)
            path.replace(target)
            atomic_write_text(target.with_name(target.name + ".reason.txt"), reason + "\n", durable=False)
            logger.error("snapshot %s quarantined to %s: %s", path.name, target, reason)
        except OSError as exc:  # a read-only directory: the file stays, and is skipped again next time
            logger.error("snapshot %s is damaged (%s) and could not be quarantined: %s", path.name, reason, exc)


def _feedback_totals(metadata: dict[str, str]) -> dict[str, int] | None:
    """A snapshot's label-feedback totals, if it has them; ValueError unless they are sound."""
    if "feedback" not in metadata:
        return None
    return FeedbackTotals.from_dict(json.loads(metadata["feedback"])).as_dict()


def _read_whole(path: Path, expected_id: str | None) -> tuple[dict[str, Tensor], dict[str, str], str]:
    """A sound file's tensors, metadata and stream id. safetensors opens the file by its name twice
    (header, then data), so a file replaced in between reads as a mix of two and fails its checksum:
    when the file at ``path`` changed during the read, it is read again rather than judged."""
    for attempt in range(3):
        before = file_signature(path)
        try:
            tensors, metadata = load(path)
            return tensors, metadata, check_content(path, tensors, metadata, expected_id)
        except ValueError:
            if attempt == 2 or file_signature(path) == before:
                raise
    raise AssertionError("unreachable")
