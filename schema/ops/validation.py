"""Input checks shared by every way in (GraphQL, CLI, import). Each failure names the field."""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from security.errors import BadUserInput

_EMAIL = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$")
_PHONE = re.compile(r"^\+?[0-9 ()./-]{4,30}$")
_NATIONAL_ID = re.compile(r"^[A-Za-z0-9 ./-]{2,40}$")
_URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$")
_TEAM = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

MAX_PAGE = 100


def text(field: str, value: Any, *, max_length: int, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise BadUserInput(f"{field} is required", field=field)
        return None
    if not isinstance(value, str):
        raise BadUserInput(f"{field} must be text", field=field)
    value = value.strip()
    if required and not value:
        raise BadUserInput(f"{field} must not be empty", field=field)
    if len(value) > max_length:
        raise BadUserInput(f"{field} is longer than {max_length} characters", field=field)
    # C0 controls (but newline and tab), DEL and the C1 controls: never text a person wrote.
    if any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160 for c in value):
        raise BadUserInput(f"{field} contains control characters", field=field)
    return value or None


def email(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=254)
    if value is not None and not _EMAIL.match(value):
        raise BadUserInput(f"{field} is not a valid email address", field=field)
    return value


def phone(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=30)
    if value is not None and (not _PHONE.match(value) or sum(c.isdigit() for c in value) < 4):
        raise BadUserInput(f"{field} is not a valid phone number", field=field)
    return value


def national_id(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=40)
    if value is not None and not _NATIONAL_ID.match(value):
        raise BadUserInput(f"{field} may hold letters, digits, spaces, '.', '/' and '-'",
                           field=field)
    return value


def past_date(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=10)
    if value is None:
        return None
    try:
        parsed = dt.date.fromisoformat(value)
    except ValueError:
        raise BadUserInput(f"{field} must be a date as YYYY-MM-DD", field=field) from None
    if parsed > dt.date.today() or parsed.year < 1900:
        raise BadUserInput(f"{field} must be between 1900 and today", field=field)
    return parsed.isoformat()


def url(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=300)
    if value is not None and not _URL.match(value):
        raise BadUserInput(f"{field} must be an http(s) URL", field=field)
    return value


def http_url_parts(field: str, value: str) -> SplitResult:
    """The parts of an absolute http(s) URL with a host and, if any, a port in 1-65535; no
    spaces or control characters anywhere."""
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise BadUserInput(f"{field} must not contain spaces or control characters", field=field)
    try:
        parts = urlsplit(value)
        port = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535", ...
        raise BadUserInput(f"{field} is not a valid URL ({exc})", field=field) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadUserInput(f"{field} must be an http(s) URL with a host", field=field)
    if port == 0:
        raise BadUserInput(f"{field} names port 0", field=field)
    return parts


def team(field: str, value: Any) -> str | None:
    value = text(field, value, max_length=100)
    if value is not None and not _TEAM.match(value):
        raise BadUserInput(f"{field} may hold letters, digits, '_', '.' and '-'", field=field)
    return value


def page_size(first: int | None) -> int:
    if first is None:
        return 20
    if not 1 <= first <= MAX_PAGE:
        raise BadUserInput(f"first must be between 1 and {MAX_PAGE}", field="first")
    return first


def encode_cursor(record_id: str) -> str:
    return base64.urlsafe_b64encode(f"id:{record_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        decoded = base64.urlsafe_b64decode(cursor.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadUserInput("after is not a cursor this API gave out", field="after") from None
    if not decoded.startswith("id:") or len(decoded) > 80:
        raise BadUserInput("after is not a cursor this API gave out", field="after")
    return decoded[3:]


def record_id(field: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f-]{36}", value):
        raise BadUserInput(f"{field} is not a valid id", field=field)
    return value
