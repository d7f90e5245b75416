"""The base of every JSON request body: an unknown key is refused, so a typo (``adaptor``) is a 422
naming it rather than a silently ignored field and a default in its place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class RequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
