"""Keyed blind indexes for exact-match search on encrypted fields.

The index is HMAC-SHA256 over a normalised value with a key of its own, so equal values are
findable without the database learning them. The kind (email, phone), not the column, is part
of the input: the same email held on a contact and on a lead gives the same index.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata

_PHONE_KEEP = re.compile(r"[^0-9+]")


def normalise(kind: str, value: str) -> str:
    value = unicodedata.normalize("NFKC", value).strip()
    if kind == "email":
        return value.lower()
    if kind == "phone":
        digits = _PHONE_KEEP.sub("", value)
        # A leading 00 is the international prefix written another way.
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        return digits
    raise ValueError(f"no blind index for kind {kind!r}")


def blind_index(key: bytes, kind: str, value: str) -> str:
    message = b"enclave/bidx/v1\x00" + kind.encode() + b"\x00" + normalise(kind, value).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()
