"""Errors raised by adapters and models; each message names the input and the fix."""

from __future__ import annotations


class AdapterError(Exception):
    """Base class of errors from this package."""


class InputError(AdapterError, ValueError):
    """A batch the adapter cannot take (wrong shape, dtype or values)."""


class CheckpointError(AdapterError, ValueError):
    """A checkpoint that is missing, unreadable or does not match the architecture."""


class MissingArtefactError(AdapterError, FileNotFoundError):
    """A source artefact an adapter needs has not been built for this model."""
