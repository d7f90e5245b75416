"""Errors raised by adapters and models; each message names the input and the fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class AdapterError(Exception):
    """Base class of errors from this package."""


class InputError(AdapterError, ValueError):
    """A batch the adapter cannot take (wrong shape, dtype or values)."""


class CheckpointError(AdapterError, ValueError):
    """A checkpoint that is missing, unreadable or does not match the architecture."""


class MissingArtefactError(AdapterError, FileNotFoundError):
    """A source artefact an adapter needs has not been built for this model."""


def describe_validation(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one line, ``field.path: message; ...`` (no URLs, no echoed input)."""
    parts = []
    for error in errors:
        where = ".".join(map(str, error.get("loc", ())))
        message = str(error.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)
