"""Errors the caller is meant to see, each with a stable code.

    EnclaveError            code INTERNAL (never shown with its message)
    ├── Unauthenticated     UNAUTHENTICATED  no valid credentials
    ├── Forbidden           FORBIDDEN        authenticated, but no policy grants it
    ├── NotFound            NOT_FOUND        absent, or outside the caller's records
    ├── BadUserInput        BAD_USER_INPUT   input fails validation; nothing was written
    └── Conflict            CONFLICT         the request clashes with the current state

GraphQL errors carry `code` in `extensions`; the CLI prints the message on one line.
"""

from __future__ import annotations

from typing import Any


class EnclaveError(Exception):
    code = "INTERNAL"
    #: Whether the message may be shown to the caller. Internal errors are masked.
    public = False

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    @property
    def extensions(self) -> dict[str, Any]:
        return {"code": self.code, **self.extra}


class Unauthenticated(EnclaveError):
    code = "UNAUTHENTICATED"
    public = True


class Forbidden(EnclaveError):
    code = "FORBIDDEN"
    public = True


class NotFound(EnclaveError):
    code = "NOT_FOUND"
    public = True


class BadUserInput(EnclaveError):
    code = "BAD_USER_INPUT"
    public = True


class Conflict(EnclaveError):
    code = "CONFLICT"
    public = True


class ConfigurationError(EnclaveError):
    """Settings or the data folder are not usable; raised before anything is served."""

    code = "CONFIGURATION"
    public = True
