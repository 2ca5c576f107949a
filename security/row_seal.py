"""Single values at rest that are not CRM fields: sealed with the field recipe under a subject key
of their own row, bound to (table, column, row id, key version). People's TOTP secrets
(`security.totp_seal`), webhook signing secrets and webhook delivery payloads.

These open outside the guard's field decisions on purpose: a TOTP secret or a signing secret is
a credential the server checks or signs with, and a payload was already filtered by the guard
for the webhook's owning client when it was queued. Nothing else opens them; no API returns them.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from security.fieldcrypt import open_sealed, seal
from security.keys import FIELD, KeyRing
from storage.sealed import Sealed

#: (table, column) of each value sealed here.
SECRET = ("webhooks", "secret")
PAYLOAD = ("webhook_deliveries", "payload")


def seal_value(keyring: KeyRing, session: Session, place: tuple[str, str], row_id: str,
               plaintext: str) -> tuple[Sealed, int]:
    """Seal under the row's subject key at the current field version; (sealed, key version)."""
    version, key = keyring.create_subject_key(session, row_id)
    table, column = place
    return Sealed(seal(key, key_version=version, table=table, column=column, row_id=row_id,
                       plaintext=plaintext)), version


def open_value(keyring: KeyRing, session: Session, place: tuple[str, str], row_id: str,
               sealed: Sealed) -> str:
    """Raises `FieldDecryptionError` if it does not open where it stands."""
    keys = keyring.load_subject_keys(session, [row_id])
    table, column = place
    return open_sealed(lambda version: keys.get((row_id, version)), table=table, column=column,
                       row_id=row_id, blob=sealed.ciphertext)


def reseal_to_current(keyring: KeyRing, session: Session, place: tuple[str, str], row_id: str,
                      sealed: Sealed | None) -> tuple[Sealed | None, int]:
    """Move a value to a fresh subject key under the newest field key (re-encryption); older
    subject keys of the row are destroyed."""
    target = keyring.current_version(FIELD)
    if sealed is None:
        keyring.destroy_subject_keys(session, row_id, except_version=target)
        return None, target
    plaintext = open_value(keyring, session, place, row_id, sealed)
    keyring.destroy_subject_keys(session, row_id)
    session.flush()
    return seal_value(keyring, session, place, row_id, plaintext)
