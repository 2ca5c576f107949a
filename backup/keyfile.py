"""keys.json: the appliance's data keys, unwrapped, for the inside of the encrypted payload.

In the database each data key is wrapped by the key-encryption key (KEK), which stays on its
machine. A backup must restore onto a machine that lost it, so keys.json carries the key
material itself (protected only by the backup's age encryption), read from the same snapshot
as the rows. A restore wraps every key again under the target's own KEK. Subject keys need no
such step: they travel as rows, wrapped by the field data key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from sqlalchemy import Connection, select

from backup.errors import Tampered
from security import keys
from security.errors import ConfigurationError
from security.fieldcrypt import FieldDecryptionError
from storage.models import DataKey

FORMAT = "enclave-keys/1"


def export_keys(connection: Connection, kek: bytes) -> tuple[bytes, int]:
    """keys.json bytes and the number of keys, from the snapshot's `data_keys` rows."""
    items: list[dict[str, Any]] = []
    rows = connection.execute(select(DataKey.purpose, DataKey.version, DataKey.wrapped,
                                     DataKey.created_at, DataKey.retired_at)
                              .order_by(DataKey.purpose, DataKey.version))
    for purpose, version, wrapped, created_at, retired_at in rows:
        try:
            material = keys.unwrap_data_key(kek, purpose, version, wrapped)
        except FieldDecryptionError:
            raise ConfigurationError(f"data key {purpose} v{version} does not open with this "
                                     "key-encryption key") from None
        items.append({"purpose": purpose, "version": version,
                      "key": base64.b64encode(material).decode(),
                      "created_at": created_at.isoformat(),
                      "retired_at": retired_at.isoformat() if retired_at else None})
    document = {"format": FORMAT, "data_keys": items}
    return (json.dumps(document, indent=1) + "\n").encode(), len(items)


def read_keys(keys_json: bytes, *, expected_count: int) -> list[dict[str, Any]]:
    """The data keys in keys.json (material unwrapped), checked against the manifest."""
    try:
        document = json.loads(keys_json)
        if document.get("format") != FORMAT:
            raise ValueError("format")
        items = [{
            "purpose": str(item["purpose"]), "version": int(item["version"]),
            "key": base64.b64decode(item["key"], validate=True),
            "created_at": dt.datetime.fromisoformat(item["created_at"]),
            "retired_at": dt.datetime.fromisoformat(item["retired_at"])
            if item["retired_at"] else None,
        } for item in document["data_keys"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Tampered("keys.json is malformed") from None
    if len(items) != expected_count:
        raise Tampered(f"keys.json holds {len(items)} keys, the manifest says {expected_count}")
    missing = set(keys.PURPOSES) - {item["purpose"] for item in items}
    if missing:
        raise Tampered(f"keys.json lacks the {', '.join(sorted(missing))} key")
    return items


def rewrap_keys(items: list[dict[str, Any]], kek: bytes) -> list[dict[str, Any]]:
    """`data_keys` rows for the target: every key wrapped under the target's own KEK."""
    return [{"purpose": item["purpose"], "version": item["version"],
             "wrapped": keys.wrap_data_key(kek, item["purpose"], item["version"], item["key"]),
             "created_at": item["created_at"], "retired_at": item["retired_at"]}
            for item in items]
