"""People's TOTP secrets at rest: sealed with the field recipe under the person's own subject key.

A person is a data subject like a contact: their subject key is wrapped by the field data key
(so `keys rotate` / `keys reencrypt` move it too) and the sealed secret is bound to
`users.totp_secret` of their row and the key version. This is the one plaintext that opens
outside the guard: a credential the sign-in code compares against, never a field anyone reads.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from security import row_seal
from security.keys import KeyRing
from storage.sealed import Sealed

PLACE = ("users", "totp_secret")


def seal_totp_secret(keyring: KeyRing, session: Session, user_id: str, secret: str) -> Sealed:
    return row_seal.seal_value(keyring, session, PLACE, user_id, secret)[0]


def open_totp_secret(keyring: KeyRing, session: Session, user_id: str, sealed: Sealed) -> str:
    """Raises `FieldDecryptionError` if it does not open where it stands."""
    return row_seal.open_value(keyring, session, PLACE, user_id, sealed)


def reseal_to_current(keyring: KeyRing, session: Session, user_id: str,
                      sealed: Sealed | None) -> Sealed | None:
    """Move a person's secret to a new subject key under the newest field key (re-encryption);
    the old subject key is destroyed."""
    return row_seal.reseal_to_current(keyring, session, PLACE, user_id, sealed)[0]
