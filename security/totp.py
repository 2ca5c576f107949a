"""TOTP second factor (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps) with pyotp.

A code is accepted for the current time step and one step either side (clock drift), and only
for a step later than the last one accepted for that person, so no code is ever accepted twice
(nor an older code after a newer one).
"""

from __future__ import annotations

import hmac
import time

import pyotp

STEP_SECONDS = 30
DIGITS = 6
#: Steps accepted either side of the current one.
WINDOW = 1
ISSUER = "Enclave"


def new_secret() -> str:
    """A fresh 160-bit secret, base32 (what authenticator apps take)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, *, account: str, issuer: str = ISSUER) -> str:
    """The otpauth:// URI an authenticator app reads (usually from a QR code)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).provisioning_uri(
        name=account, issuer_name=issuer)


def current_step(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // STEP_SECONDS)


def code_at(secret: str, step: int) -> str:
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_SECONDS).generate_otp(step)


def matching_step(secret: str, code: str, *, last_step: int | None,
                  now: float | None = None) -> int | None:
    """The time step `code` belongs to, if it is within ±WINDOW of now and later than
    `last_step`; otherwise None. Every candidate is compared in constant time."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    step = current_step(now)
    found: int | None = None
    for candidate in range(step - WINDOW, step + WINDOW + 1):
        if hmac.compare_digest(code_at(secret, candidate), code):
            found = candidate
    if found is None or (last_step is not None and found <= last_step):
        return None
    return found
