"""Ground truth when it exists: labels for earlier requests give each stream's online error, for
the adapted and for the frozen source prediction (counts, so rates aggregate).

The predictions of the last ``max_requests`` ``/v1/predict`` requests (all streams together) are
kept, oldest dropped first: at most ``max_requests x max_images_per_request`` pairs of class
indices. Labels for a request that is unknown, expired or already labelled are refused.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

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

    def report(self) -> dict[str, float | int]:
        out: dict[str, float | int] = dict(vars(self))
        if self.images:
            out["adapted_error_rate"] = self.adapted_errors / self.images
        if self.source_images:
            out["source_error_rate"] = self.source_errors / self.source_images
        return out


class FeedbackLog:
    def __init__(self, max_requests: int, num_classes: int) -> None:
        self.max_requests, self.num_classes = max_requests, num_classes
        self._pending: OrderedDict[str, tuple[str, list[int], list[int] | None]] = OrderedDict()
        self.totals: dict[str, FeedbackTotals] = {}

    def record(self, request_id: str, stream_id: str, adapted: Tensor, source: Tensor | None) -> None:
        self._pending[request_id] = (stream_id, adapted.tolist(), None if source is None else source.tolist())
        self._pending.move_to_end(request_id)
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
        entry = self._pending.get(request_id)
        if entry is None or entry[0] != stream_id:
            raise FeedbackError(
                404,
                "unknown_request",
                f"no pending prediction {request_id!r} on stream {stream_id!r}: unknown, already labelled, or "
                f"expired (the last {self.max_requests} requests are kept)",
            )
        _, adapted, source = entry
        if len(labels) != len(adapted) or not all(0 <= label < self.num_classes for label in labels):
            raise FeedbackError(
                422,
                "invalid_labels",
                f"request {request_id!r} had {len(adapted)} images: send as many labels in 0..{self.num_classes - 1}",
            )
        return adapted, source

    def resolve(self, stream_id: str, request_id: str, labels: list[int]) -> FeedbackTotals:
        adapted, source = self._entry(stream_id, request_id, labels)
        del self._pending[request_id]
        totals = self.totals.setdefault(stream_id, FeedbackTotals())
        totals.images += len(labels)
        totals.adapted_errors += sum(a != y for a, y in zip(adapted, labels, strict=True))
        if source is not None:
            totals.source_images += len(labels)
            totals.source_errors += sum(s != y for s, y in zip(source, labels, strict=True))
        return totals

    def forget(self, stream_id: str) -> None:
        """A deleted stream: its totals and pending predictions go."""
        self.totals.pop(stream_id, None)
        for request_id in [r for r, (s, _, _) in self._pending.items() if s == stream_id]:
            del self._pending[request_id]
