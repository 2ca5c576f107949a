"""The guard: the one place where a sealed field becomes plaintext.

For every field read it (a) takes the policy decision (memoised per policy version), (b) records
the access for the audit log, (c) opens the sealed value with the data subject's key. Writes go
through it too: it checks field grants and seals values bound to their row. Reads are gathered
per request and written as one audit entry per object type (and one per refusal) by
`audit_entries()`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy.orm import Session

from security.audit import AuditEntry
from security.authz import READ, WRITE, Decision, PolicySnapshot
from security.blindindex import blind_index
from security.classification import OBJECTS, FieldSpec, ObjectSpec, mask_value
from security.errors import EnclaveError, Forbidden
from security.fieldcrypt import FieldDecryptionError, PreparedKey, open_sealed, prepare_key, seal
from security.keys import BLIND_INDEX, KeyRing
from security.principal import Principal
from storage.sealed import Sealed


class FieldForbidden(Forbidden):
    """This field, of a record the caller may see, is not granted to them."""


class SealedFieldError(EnclaveError):
    """A sealed value did not open where it stands (moved, altered, or its key destroyed)."""

    code = "DATA_INTEGRITY"
    public = True

    def __init__(self, object_type: str, record_id: str, field_name: str) -> None:
        super().__init__(
            f"{object_type}.{field_name} of {record_id} failed authentication: the ciphertext "
            "was moved, altered or its key destroyed", field=field_name)


@dataclass
class _Reads:
    ids: dict[str, None] = field(default_factory=dict)  # ordered set
    fields: dict[str, None] = field(default_factory=dict)


class _ReadPlan(NamedTuple):
    spec: ObjectSpec
    fspec: FieldSpec
    decision: Decision
    attribute: str
    audit_label: str | None


class Guard:
    def __init__(self, *, principal: Principal, policy: PolicySnapshot, keyring: KeyRing,
                 session: Session, request_id: str | None = None) -> None:
        self.principal = principal
        self.policy = policy
        self.keyring = keyring
        self.session = session
        self.request_id = request_id
        self._subject_keys: dict[tuple[str, int], bytes] = {}
        self._aeads: dict[tuple[str, int], PreparedKey] = {}
        self._loaded_subjects: set[str] = set()
        self._reads: dict[str, _Reads] = {}
        self._refusals: dict[tuple[str, str], _Reads] = {}
        # What reading each (object type, field) means under `self.policy`; see `_read_plan`.
        self._plans: dict[tuple[str, str], _ReadPlan] = {}
        self._plans_policy: PolicySnapshot | None = None

    # -- decisions --------------------------------------------------------------------------

    def decision(self, object_type: str, field_name: str, action: str = READ) -> Decision:
        return self.policy.field(self.principal.roles, object_type, field_name, action)

    def scopes(self, object_type: str, action: str) -> frozenset[str]:
        return self.policy.scopes(self.principal.roles, object_type, action)

    def permits(self, object_type: str, action: str) -> bool:
        return self.policy.permits(self.principal.roles, object_type, action)

    def require(self, object_type: str, action: str) -> None:
        """Object-level permission, or a refusal that is audited."""
        if not self.permits(object_type, action):
            reason = f"no policy grants {action} on {object_type} to {self._roles_text}"
            self.refuse(object_type, (), (f"@{action}",), reason)
            raise Forbidden(reason)

    def in_scope(self, object_type: str, record: Any, action: str) -> bool:
        scopes = self.scopes(object_type, action)
        return ("@all" in scopes
                or ("@team" in scopes and self.principal.team is not None
                    and record.team == self.principal.team)
                or ("@own" in scopes and record.owner == self.principal.id))

    @property
    def _roles_text(self) -> str:
        return ", ".join(self.principal.roles) or "no role"

    # -- reading ----------------------------------------------------------------------------

    def preload(self, records: Iterable[Any]) -> None:
        """Load the subject keys of many records in one query (no N+1), or none at all when
        the records' query brought each one's current wrapped key along."""
        ids = []
        for record in records:
            if record.id in self._loaded_subjects:
                continue
            wrapped = getattr(record, "current_wrapped_key", None)
            if wrapped is None:
                ids.append(record.id)
                continue
            self._subject_keys[(record.id, record.key_version)] = \
                self.keyring.unwrap_subject_key(record.id, record.key_version, wrapped)
            self._loaded_subjects.add(record.id)
        if ids:
            self._subject_keys.update(self.keyring.load_subject_keys(self.session, ids))
            self._loaded_subjects.update(ids)

    def reveal(self, object_type: str, record: Any, field_name: str) -> Any:
        """The value of one field for the caller: plain, masked, or a FORBIDDEN refusal."""
        plan = (self._plans.get((object_type, field_name)) if self._plans_policy is self.policy
                else None) or self._read_plan(object_type, field_name)
        spec, fspec, decision, attribute, audit_label = plan
        if decision is Decision.DENY:
            reason = (f"no policy grants read on {object_type}.{field_name} "
                      f"({fspec.classification.value}) to {self._roles_text}")
            self.refuse(object_type, (record.id,), (field_name,), reason)
            raise FieldForbidden(reason, field=field_name)
        value = getattr(record, attribute)
        if fspec.sealed and value is not None:
            value = self._open(spec, record, field_name, value)
        if audit_label is not None:  # personal: noted for the audit log (cf. `_note_read`)
            reads = self._reads.get(object_type)
            if reads is None:
                reads = self._reads[object_type] = _Reads()
            reads.ids[record.id] = None
            reads.fields[audit_label] = None
        if decision is Decision.MASK and value is not None:
            return mask_value(fspec.mask, str(value))
        return value

    def _read_plan(self, object_type: str, field_name: str) -> _ReadPlan:
        """Work out once per guard and policy snapshot what reading a field means: its specs,
        the snapshot's decision (itself memoised per policy version), the attribute holding
        it, and the label its reads are audited under (None for a non-personal field)."""
        if self._plans_policy is not self.policy:
            self._plans = {}
            self._plans_policy = self.policy
        spec = OBJECTS[object_type]
        fspec = spec.field(field_name)
        decision = self.decision(object_type, field_name)
        audit_label = None
        if fspec.personal:
            audit_label = field_name if decision is Decision.ALLOW else f"{field_name}:masked"
        plan = _ReadPlan(spec, fspec, decision,
                         field_name if field_name != "account" else "account_id", audit_label)
        self._plans[(object_type, field_name)] = plan
        return plan

    def _open(self, spec: ObjectSpec, record: Any, field_name: str, sealed: Sealed) -> str:
        record_id = record.id
        if record_id not in self._loaded_subjects:
            self.preload([record])
        try:
            return open_sealed(
                lambda version: self._aead(record_id, version),
                table=spec.table, column=field_name, row_id=record_id, blob=sealed.ciphertext,
            )
        except FieldDecryptionError:
            raise SealedFieldError(spec.name, record.id, field_name) from None

    def _aead(self, subject_id: str, version: int) -> PreparedKey | None:
        aead = self._aeads.get((subject_id, version))
        if aead is None:
            key = self._subject_keys.get((subject_id, version))
            if key is None:
                return None
            aead = self._aeads[(subject_id, version)] = prepare_key(key)
        return aead

    def _note_read(self, object_type: str, record_id: str, field_name: str) -> None:
        reads = self._reads.get(object_type)
        if reads is None:
            reads = self._reads[object_type] = _Reads()
        reads.ids[record_id] = None
        reads.fields[field_name] = None

    def refuse(self, object_type: str, record_ids: Iterable[str], fields: Iterable[str],
               reason: str) -> None:
        refusal = self._refusals.setdefault((object_type, reason), _Reads())
        for record_id in record_ids:
            refusal.ids[record_id] = None
        for name in fields:
            refusal.fields[name] = None

    # -- writing ----------------------------------------------------------------------------

    def check_writable(self, object_type: str, field_names: Iterable[str]) -> None:
        denied = [name for name in field_names
                  if self.decision(object_type, name, WRITE) is not Decision.ALLOW]
        if denied:
            reason = (f"no policy grants write on {object_type}."
                      f"{', '.join(denied)} to {self._roles_text}")
            self.refuse(object_type, (), denied, reason)
            raise Forbidden(reason, fields=denied)

    def seal_fields(self, object_type: str, record: Any, values: Mapping[str, str | None]) -> None:
        """Seal `values` onto `record` under the subject's key for the current version, and
        keep its blind indexes in step. Every sealed field of the row moves to that version."""
        spec = OBJECTS[object_type]
        plain: dict[str, str | None] = {}
        if record.key_version is not None:  # an existing row: re-seal what it already holds
            for fspec in spec.sealed_fields:
                current = getattr(record, fspec.name)
                plain[fspec.name] = (None if current is None
                                     else self._open(spec, record, fspec.name, current))
        plain.update(values)
        version, key = self.keyring.create_subject_key(self.session, record.id)
        index_key = self.keyring.key(BLIND_INDEX) or b""
        for fspec in spec.sealed_fields:
            value = plain.get(fspec.name)
            setattr(record, fspec.name, None if value is None else Sealed(seal(
                key, key_version=version, table=spec.table, column=fspec.name,
                row_id=record.id, plaintext=value)))
            if fspec.index_kind:
                setattr(record, f"{fspec.name}_bidx",
                        None if value is None else blind_index(index_key, fspec.index_kind, value))
        old_version = record.key_version
        record.key_version = version
        self._subject_keys[(record.id, version)] = key
        self._aeads.pop((record.id, version), None)
        if old_version is not None and old_version != version:
            self.keyring.destroy_subject_keys(self.session, record.id, except_version=version)

    def search_index(self, kind: str, value: str) -> str:
        return blind_index(self.keyring.key(BLIND_INDEX) or b"", kind, value)

    # -- audit ------------------------------------------------------------------------------

    def audit_entries(self) -> list[AuditEntry]:
        """One entry per object type read, one per refusal; then forget them."""
        entries = [
            AuditEntry(actor=self.principal.actor, roles=self.principal.roles,
                       action=f"{object_type}.read", object_type=object_type,
                       object_ids=list(reads.ids), fields=list(reads.fields),
                       decision="allow", request_id=self.request_id)
            for object_type, reads in self._reads.items()
        ]
        entries += [
            AuditEntry(actor=self.principal.actor, roles=self.principal.roles,
                       action=f"{object_type}.refused", object_type=object_type,
                       object_ids=list(refusal.ids), fields=list(refusal.fields),
                       decision="deny", reason=reason, request_id=self.request_id)
            for (object_type, reason), refusal in self._refusals.items()
        ]
        self._reads.clear()
        self._refusals.clear()
        return entries


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
