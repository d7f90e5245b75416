"""The stream-id grammar, checked at every edge (REST headers, paths, bodies, OIP ``sequence_id``).

A stream id is 1 to 128 characters from ``A-Z a-z 0-9 . _ : -`` and starts with a letter or a
digit. Ids never become file names (the snapshot store hashes them), so the grammar is about
readable logs and URLs, not about the file system.
"""

from __future__ import annotations

import re

from tta_server.streams.errors import InvalidStreamIdError

STREAM_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
STREAM_ID_MAX_LENGTH = 128
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
OIP_SEQUENCE_PREFIX = "seq-"


def validate_stream_id(stream_id: object) -> str:
    if not isinstance(stream_id, str) or not _STREAM_ID.fullmatch(stream_id):
        shown = repr(stream_id)[:80]
        raise InvalidStreamIdError(
            f"invalid stream id {shown}: use 1-{STREAM_ID_MAX_LENGTH} characters from A-Z a-z 0-9 . _ : - "
            "starting with a letter or digit"
        )
    return stream_id


def stream_id_for_sequence(sequence_id: object) -> str | None:
    """The stream of an OIP ``sequence_id`` (a non-negative integer or a string; 0 or "" is none)."""
    if sequence_id is None or sequence_id == 0 or sequence_id == "":
        return None
    if isinstance(sequence_id, bool) or not isinstance(sequence_id, int | str):
        raise InvalidStreamIdError(f"sequence_id must be an unsigned integer or a string, got {sequence_id!r}"[:160])
    if isinstance(sequence_id, int) and not 0 < sequence_id < 2**64:
        raise InvalidStreamIdError(f"integer sequence_id must be in 1..2^64-1, got {sequence_id}")
    return validate_stream_id(f"{OIP_SEQUENCE_PREFIX}{sequence_id}")
