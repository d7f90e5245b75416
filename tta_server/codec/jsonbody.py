"""JSON with bounded nesting: Python's parser recurses, so a deep body would otherwise crash a request."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from tta_server.codec.errors import ApiError

MAX_DEPTH = 64
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def nesting_depth(body: bytes) -> int:
    """The deepest ``[``/``{`` nesting outside strings (vectorised: bodies can be megabytes)."""
    structural = np.frombuffer(_STRINGS.sub(b'""', body), dtype=np.uint8)
    steps = np.isin(structural, (ord("["), ord("{"))).astype(np.int32) - np.isin(structural, (ord("]"), ord("}")))
    return int(np.cumsum(steps).max(initial=0))


def parse_json(body: bytes, what: str = "the request body", max_depth: int = MAX_DEPTH) -> Any:
    depth = nesting_depth(body)
    if depth > max_depth:
        raise ApiError(400, "invalid_json", f"{what} nests {depth} levels deep; at most {max_depth} are accepted")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON: {exc}") from None
