"""Ground truth when it exists: labels for earlier requests give each stream's online error, for
the adapted and for the frozen source prediction (counts, so rates aggregate).

The predictions of the last ``max_requests`` ``/v1/predict`` requests (all streams together) are
kept, oldest dropped first, as int16 class indices: at most 4 bytes per image, so
``max_requests x max_images_per_request x 4`` bytes (10 MiB with the defaults). They are keyed by
stream and request id, so a client that reuses another stream's ``X-Request-Id`` cannot replace
that stream's pending predictions. Labels for a request that is unknown, expired or already
labelled are refused.

Each stream's totals live with the stream (:attr:`Stream.feedback`) and are written in its
snapshots, so they survive spills, restarts and hand-overs between replicas; pending predictions
stay in the process that answered them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor


class FeedbackError(ValueError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class FeedbackTotals:
    images: int = 0
    adapted_errors: int = 0
    source_images: int = 0  # images whose source prediction was kept (source_signals on)
    source_errors: int = 0

    @classmethod
    def from_dict(cls, values: Any) -> FeedbackTotals:
        """Totals read back from a snapshot; ``ValueError`` unless they are non-negative counts."""
        names = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) - names:
            raise ValueError(f"feedback totals must be an object with keys among {sorted(names)}")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values.values()):
            raise ValueError("feedback totals must be non-negative integers")
        return cls(**values)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def plus(self, images: int, adapted_errors: int, source_images: int, source_errors: int) -> FeedbackTotals:
        return replace(
            self,
            images=self.images + images,
            adapted_errors=self.adapted_errors + adapted_errors,
            source_images=self.source_images + source_images,
            source_errors=self.source_errors + source_errors,
        )

    def report(self) -> dict[str, float | int]:
        out: dict[str, float | int] = dict(self.as_dict())
        if self.images:
            out["adapted_error_rate"] = self.adapted_errors / self.images
        if self.source_images:
            out["source_error_rate"] = self.source_errors / self.source_images
        return out


class FeedbackLog:
    def __init__(self, max_requests: int, num_classes: int) -> None:
        self.max_requests, self.num_classes = max_requests, num_classes
        self._pending: OrderedDict[tuple[str, str], tuple[Tensor, Tensor | None]] = OrderedDict()
        self.scored = FeedbackTotals()  # every stream's, since this process started: the metrics' counters

    def record(self, request_id: str, stream_id: str, adapted: Tensor, source: Tensor | None) -> None:
        key = (stream_id, request_id)
        self._pending[key] = (adapted.to(torch.int16), None if source is None else source.to(torch.int16))
        self._pending.move_to_end(key)
        while len(self._pending) > self.max_requests:
            self._pending.popitem(last=False)

    def check(self, stream_id: str, items: list[tuple[str, list[int]]]) -> None:
        """Raise for the first item :meth:`resolve` would refuse, changing nothing."""
        seen: set[str] = set()
        for request_id, labels in items:
            if request_id in seen:
                raise FeedbackError(422, "invalid_labels", f"request {request_id!r} is labelled twice")
            seen.add(request_id)
            self._entry(stream_id, request_id, labels)

    def _entry(self, stream_id: str, request_id: str, labels: list[int]) -> tuple[list[int], list[int] | None]:
        entry = self._pending.get((stream_id, request_id))
        if entry is None:
            raise FeedbackError(
                404,
                "unknown_request",
                f"no pending prediction {request_id!r} on stream {stream_id!r}: unknown, already labelled, or "
                f"expired (the last {self.max_requests} requests are kept)",
            )
        adapted, source = entry[0].tolist(), None if entry[1] is None else entry[1].tolist()
        if len(labels) != len(adapted) or not all(0 <= label < self.num_classes for label in labels):
            raise FeedbackError(
                422,
                "invalid_labels",
                f"request {request_id!r} had {len(adapted)} images: send as many labels in 0..{self.num_classes - 1}",
            )
        return adapted, source

    def resolve(self, stream_id: str, request_id: str, labels: list[int], totals: FeedbackTotals) -> FeedbackTotals:
        """Score one pending request: ``totals`` (the stream's) plus its counts, a new object (a
        snapshot being written meanwhile sees the old totals or the new, never a mix)."""
        adapted, source = self._entry(stream_id, request_id, labels)
        del self._pending[(stream_id, request_id)]
        counts = (
            len(labels),
            sum(a != y for a, y in zip(adapted, labels, strict=True)),
            0 if source is None else len(labels),
            0 if source is None else sum(s != y for s, y in zip(source, labels, strict=True)),
        )
        self.scored = self.scored.plus(*counts)
        return totals.plus(*counts)

    def forget(self, stream_id: str) -> None:
        """A deleted stream: its pending predictions go (its totals went with the stream)."""
        for key in [key for key in self._pending if key[0] == stream_id]:
            del self._pending[key]
