"""People's TOTP secrets at rest: sealed with the field recipe under the person's own subject key.

A person is a data subject like a contact: their subject key is wrapped by the field data key
(so `keys rotate` / `keys reencrypt` move it too) and the sealed secret is bound to
`users.totp_secret` of their row and the key version. This is the one plaintext that opens
outside the guard: a credential the sign-in code compares against, never a field anyone reads.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from security.fieldcrypt import open_sealed, seal
from security.keys import FIELD, KeyRing
from storage.sealed import Sealed

TABLE, COLUMN = "users", "totp_secret"


def seal_totp_secret(keyring: KeyRing, session: Session, user_id: str, secret: str) -> Sealed:
    version, key = keyring.create_subject_key(session, user_id)
    return Sealed(seal(key, key_version=version, table=TABLE, column=COLUMN, row_id=user_id,
                       plaintext=secret))


def open_totp_secret(keyring: KeyRing, session: Session, user_id: str, sealed: Sealed) -> str:
    """Raises `FieldDecryptionError` if it does not open where it stands."""
    keys = keyring.load_subject_keys(session, [user_id])
    return open_sealed(lambda version: keys.get((user_id, version)), table=TABLE, column=COLUMN,
                       row_id=user_id, blob=sealed.ciphertext)


def reseal_to_current(keyring: KeyRing, session: Session, user_id: str,
                      sealed: Sealed | None) -> Sealed | None:
    """Move a person's secret to a new subject key under the newest field key (re-encryption);
    the old subject key is destroyed."""
    target = keyring.current_version(FIELD)
    if sealed is None:
        keyring.destroy_subject_keys(session, user_id, except_version=target)
        return None
    secret = open_totp_secret(keyring, session, user_id, sealed)
    keyring.destroy_subject_keys(session, user_id)
    session.flush()
    return seal_totp_secret(keyring, session, user_id, secret)
