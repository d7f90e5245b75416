"""The codec's one error type: an HTTP 4xx status, a machine-readable code and a message."""

from __future__ import annotations


class ApiError(ValueError):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
