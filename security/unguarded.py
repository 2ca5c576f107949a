"""A guard that guards nothing: for the benchmark's baseline only.

It stores personal fields as plain bytes, allows everything and audits nothing, so the benchmark
can measure what encryption, authorisation and audit cost. It is reachable only through
`Appliance.open(..., unsafe_unguarded_for_benchmark=True)`; no setting, variable or command
switches it on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from security.audit import AuditEntry
from security.authz import Decision
from security.blindindex import blind_index
from security.classification import OBJECTS
from security.guard import Guard
from security.keys import BLIND_INDEX
from storage.sealed import Sealed

_ALL_SCOPES = frozenset({"@all"})


class UnguardedGuard(Guard):
    def decision(self, object_type: str, field_name: str, action: str = "read") -> Decision:
        return Decision.ALLOW

    def scopes(self, object_type: str, action: str) -> frozenset[str]:
        return _ALL_SCOPES

    def permits(self, object_type: str, action: str) -> bool:
        return True

    def in_scope(self, object_type: str, record: Any, action: str) -> bool:
        return True

    def preload(self, records: Iterable[Any]) -> None:
        pass

    def reveal(self, object_type: str, record: Any, field_name: str) -> Any:
        fspec = OBJECTS[object_type].field(field_name)
        if fspec.custom:
            return None
        value = getattr(record, fspec.attr)
        if isinstance(value, Sealed):
            return value.ciphertext.decode("utf-8")
        return value

    def seal_fields(self, object_type: str, record: Any, values: Mapping[str, str | None],
                    custom: Mapping[str, Any] | None = None) -> None:
        index_key = self.keyring.key(BLIND_INDEX) or b""
        for fspec in OBJECTS[object_type].sealed_fields:
            if fspec.name not in values:
                continue
            value = values[fspec.name]
            setattr(record, fspec.name, None if value is None else Sealed(value.encode("utf-8")))
            if fspec.index_kind:
                setattr(record, f"{fspec.name}_bidx",
                        None if value is None else blind_index(index_key, fspec.index_kind, value))
        record.key_version = 0

    def audit_entries(self) -> list[AuditEntry]:
        return []
