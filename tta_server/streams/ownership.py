"""Stream ownership between replicas that share one snapshot store: leases fenced by a generation.

A stream is active on one replica at a time. Its lease (``<snapshot_dir>/leases/<name>.json``)
names the owner, a generation and an expiry; every change happens under an exclusive ``flock`` of
the stream's lock file (POSIX advisory locks: local disks, NFSv4 and most ReadWriteMany volumes).

* ``acquire``: a lease that is free, expired, released or already this replica's becomes this
  replica's with the next generation. One held by a live replica is asked to hand the stream over
  (``handover_to``) and :class:`StreamOwnedError` says so; the caller retries for a while.
* ``renew``: the owner extends its leases every ``ttl_s / 3``; a lease no longer at its generation
  was taken over (this replica stalled past the TTL), and the stream leaves memory unwritten.
* ``fenced``: a snapshot is written under the lock and only while the lease is this replica's at its
  generation, so a previous owner can never overwrite a newer snapshot.
* ``release``: after the stream's last snapshot (shutdown, a requested handover, idle expiry) the
  lease is marked released and the next replica takes over at once. A killed replica releases
  nothing: its streams move when the TTL runs out, from their last periodic snapshot.
* ``forget``: a deleted stream's lease and lock file are removed, so ids that come and go leave
  nothing behind. The lock file is unlinked while it is locked; whoever waited on it then holds
  a lock on a file no longer in the directory, notices (its inode is not the path's) and locks
  the path anew, so two replicas never hold "the" lock at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from adapters.atomic import atomic_write_text
from tta_server.streams.errors import LostOwnershipError, StreamOwnedError
from tta_server.streams.snapshot_file import file_name

logger = logging.getLogger(__name__)
LEASES = "leases"


@dataclass
class Lease:
    owner: str
    generation: int
    expires_at: float
    released: bool = False
    handover_to: str | None = None


class Ownership:
    def __init__(self, directory: Path, replica_id: str, ttl_s: float = 15.0) -> None:
        self.directory = directory / LEASES
        self.directory.mkdir(parents=True, exist_ok=True)
        self.replica_id, self.ttl_s = replica_id, ttl_s
        self.held: dict[str, int] = {}  # stream id -> the generation this replica holds
        self.until: dict[str, float] = {}  # stream id -> when its lease runs out, as last written here

    def _path(self, stream_id: str, suffix: str) -> Path:
        return self.directory / (file_name(stream_id).split(".")[0] + suffix)

    @contextmanager
    def _locked(self, stream_id: str) -> Iterator[Path]:
        lock_path = self._path(stream_id, ".lock")
        while True:
            with open(lock_path, "a+") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    if not _still_linked(lock.fileno(), lock_path):
                        continue  # forgotten while we waited: lock the file now at that path
                    yield self._path(stream_id, ".json")
                    return
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _read(path: Path) -> Lease | None:
        try:
            return Lease(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:  # a damaged lease protects nothing: treat it as free
            logger.warning("lease %s is unreadable (%s); treating it as free", path.name, exc)
            return None

    def _write(self, path: Path, lease: Lease) -> None:
        atomic_write_text(path, json.dumps(asdict(lease)))

    def _ours(self, stream_id: str, lease: Lease | None) -> bool:
        held = self.held.get(stream_id)
        return lease is not None and not lease.released and lease.owner == self.replica_id and lease.generation == held

    def acquire(self, stream_id: str, ask_handover: bool = True) -> int:
        """Take the stream's lease (its generation), or raise :class:`StreamOwnedError` (having asked
        the live owner to hand the stream over, unless ``ask_handover`` is off)."""
        with self._locked(stream_id) as path:
            lease, now = self._read(path), time.time()
            if self._ours(stream_id, lease):
                assert lease is not None
                lease.expires_at = now + self.ttl_s
                self._write(path, lease)
                self.until[stream_id] = lease.expires_at
                return lease.generation
            if lease is None or lease.released or lease.expires_at <= now or lease.owner == self.replica_id:
                # above any generation this replica held too: a lease forgotten (its stream deleted)
                # and taken again must not look to a stalled holder like the one it held
                generation = max(lease.generation if lease else 0, self.held.get(stream_id, 0)) + 1
                self._write(path, Lease(self.replica_id, generation, now + self.ttl_s))
                self.held[stream_id], self.until[stream_id] = generation, now + self.ttl_s
                return generation
            if ask_handover and lease.handover_to != self.replica_id:
                lease.handover_to = self.replica_id
                self._write(path, lease)
            raise StreamOwnedError(stream_id, lease.owner, asked=ask_handover)

    def holds(self, stream_id: str) -> bool:
        return stream_id in self.held

    def has_lease(self, stream_id: str) -> bool:
        """Some replica has ever taken the stream's lease (it may be released or expired)."""
        return self._path(stream_id, ".json").exists()

    def fresh(self, stream_id: str) -> bool:
        """Held, with more than a third of the TTL left: safe to serve without looking at the file.
        Otherwise (renewals stalled) the caller re-validates with :meth:`acquire` before serving."""
        return stream_id in self.held and self.until.get(stream_id, 0.0) - time.time() > self.ttl_s / 3

    @contextmanager
    def fenced(self, stream_id: str) -> Iterator[None]:
        """Hold the lock while the caller writes the stream's snapshot; refuse if the lease moved."""
        with self._locked(stream_id) as path:
            if not self._ours(stream_id, self._read(path)):
                self.held.pop(stream_id, None)
                raise LostOwnershipError(f"stream {stream_id!r} is now owned by another replica; not written")
            yield

    def renew(self) -> tuple[list[str], list[str]]:
        """Extend every held lease; returns (lost, asked to hand over)."""
        lost, asked = [], []
        for stream_id in list(self.held):
            with self._locked(stream_id) as path:
                lease = self._read(path)
                if not self._ours(stream_id, lease):
                    self.held.pop(stream_id, None)
                    lost.append(stream_id)
                    continue
                assert lease is not None
                lease.expires_at = time.time() + self.ttl_s
                self._write(path, lease)
                self.until[stream_id] = lease.expires_at
                if lease.handover_to not in (None, self.replica_id):
                    asked.append(stream_id)
        return lost, asked

    def release(self, stream_id: str) -> None:
        """Hand the stream to whoever asks next (after its last snapshot)."""
        if stream_id not in self.held:
            return  # not ours: nothing to write (and no lock file to create)
        with self._locked(stream_id) as path:
            lease = self._read(path)
            if self._ours(stream_id, lease):
                assert lease is not None
                lease.released, lease.expires_at, lease.handover_to = True, 0.0, None
                self._write(path, lease)
            self.held.pop(stream_id, None)

    def forget(self, stream_id: str) -> None:
        """Remove a deleted stream's lease and lock file (this replica held it to delete it)."""
        if stream_id not in self.held:
            return
        with self._locked(stream_id) as path:
            if self._ours(stream_id, self._read(path)):
                path.unlink(missing_ok=True)
                self._path(stream_id, ".lock").unlink(missing_ok=True)  # still locked: see the module doc
            self.held.pop(stream_id, None)
            self.until.pop(stream_id, None)

    def report(self) -> dict[str, object]:
        return {"replica_id": self.replica_id, "lease_ttl_s": self.ttl_s, "streams_held": len(self.held)}


def _still_linked(fd: int, path: Path) -> bool:
    """The open file ``fd`` is the file at ``path`` (not one unlinked and replaced meanwhile)."""
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False
