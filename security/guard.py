"""The guard: the one place where a sealed field becomes plaintext (the lean lane's pages of
plain tuples are opened by its sibling `security.page_reader`, with the same decisions,
associated data, masks and audit labels; docs/security-kernel.md).

For every field read it (a) takes the policy decision (memoised per policy version), (b) records
the access for the audit log, (c) opens the sealed value with the data subject's key. Writes go
through it too: it checks field grants and seals values bound to their row. Reads are gathered
per request and written as one audit entry per object type (and one per refusal) by
`audit_entries()`.
"""

from __future__ import annotations

import datetime as dt
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import inspect as sa_inspect
from sqlalchemy import select
from sqlalchemy.orm import Session

from security.audit import AuditEntry
from security.authz import READ, WRITE, Decision, PolicySnapshot
from security.blindindex import blind_index
from security.classification import (
    CUSTOM_SEALED,
    MARKETING_PURPOSE,
    FieldSpec,
    ObjectSpec,
    mask_value,
)
from security.errors import EnclaveError, Forbidden
from security.fieldcrypt import (
    FieldDecryptionError,
    PreparedKey,
    open_at,
    open_sealed,
    place,
    prepare_key,
    seal,
)
from security.keys import BLIND_INDEX, KeyRing
from security.page_reader import read_entries
from security.principal import Principal
from storage.crm_models import Consent
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


class ReadFailure:
    """A field `Guard.row_reader` could not give: the exception `reveal` would have raised."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _ReadPlan(NamedTuple):
    spec: ObjectSpec
    fspec: FieldSpec
    decision: Decision
    attribute: str
    audit_label: str | None


def record_rule(scopes: frozenset[str], principal: Principal,
                ) -> Callable[[str | None, str | None], bool]:
    """Whether a record of (team, owner) is within `scopes` (the record rules of the caller's
    roles for one object type and action) for `principal`."""
    if "@all" in scopes:
        return lambda team, owner: True
    own_team = principal.team if "@team" in scopes else None
    by_owner, me = "@own" in scopes, principal.id
    return lambda team, owner: ((own_team is not None and team == own_team)
                                or (by_owner and owner == me))


class Guard:
    def __init__(self, *, principal: Principal, policy: PolicySnapshot, keyring: KeyRing,
                 session: Session, request_id: str | None = None) -> None:
        self.principal = principal
        self.policy = policy
        self.keyring = keyring
        self.session = session
        self.request_id = request_id
        self._subject_keys: dict[tuple[str, int], bytes] = {}
        # Opened `custom_sealed` blobs, by record id.
        self._custom_opened: dict[str, dict[str, Any]] = {}
        # Marketing consent in force, by (contact id, channel); ids of records preloaded, whose
        # consent is looked up together when first needed.
        self._consent: dict[tuple[str, str], bool] = {}
        self._consent_pending: set[str] = set()
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

    def scope_test(self, object_type: str, action: str) -> Callable[[Any], bool]:
        """`in_scope` for many records of one type: the record rules looked up once."""
        rule = record_rule(self.scopes(object_type, action), self.principal)
        return lambda record: rule(record.team, record.owner)

    @property
    def _roles_text(self) -> str:
        return ", ".join(self.principal.roles) or "no role"

    # -- reading ----------------------------------------------------------------------------

    def forget(self) -> None:
        """Drop the subject keys and opened values this guard holds: its unit of work has
        ended. The request's context, which holds the guard, can outlive the request (the
        ordinary executor's execution context refers to it from a reference cycle, freed
        only when the garbage collector next runs, which on a quiet server can be long)."""
        self._subject_keys.clear()
        self._aeads.clear()
        self._custom_opened.clear()
        self._loaded_subjects.clear()
        self._consent.clear()
        self._consent_pending.clear()

    def preload(self, records: Iterable[Any]) -> None:
        """Load the subject keys of many records in one query (no N+1), or none at all when
        the records' query brought each one's current wrapped key along."""
        ids = []
        for record in records:
            self._consent_pending.add(record.id)
            if record.id in self._loaded_subjects:
                continue
            if record.key_version is None:  # nothing sealed on this record yet
                continue
            wrapped = getattr(record, "current_wrapped_key", None)
            if wrapped is None:
                ids.append(record.id)
                continue
            subject = (record.id, record.key_version)
            try:
                self._subject_keys[subject], self._aeads[subject] = \
                    self.keyring.open_subject_key(record.id, record.key_version, wrapped)
            except FieldDecryptionError:
                # A wrapped key that does not open here (moved from another subject, or
                # altered) is no key: each sealed field then fails as DATA_INTEGRITY.
                pass
            self._loaded_subjects.add(record.id)
        if ids:
            self._subject_keys.update(self.keyring.load_subject_keys(self.session, ids,
                                                                     skip_unopened=True))
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
        if decision is Decision.CONSENTED and not self.consents(record.id,
                                                                 fspec.consent_channel or ""):
            reason = (f"{object_type}.{field_name} is granted to {self._roles_text} only with "
                      f"{MARKETING_PURPOSE} consent on {fspec.consent_channel}, which this "
                      "person has not given")
            self.refuse(object_type, (record.id,), (field_name,), reason)
            raise FieldForbidden(reason, field=field_name)
        if fspec.custom:
            value = self._custom_value(spec, record, fspec)
        else:
            value = getattr(record, attribute)
            if fspec.sealed and value is not None:
                value = self._open(spec, record, field_name, value)
        if audit_label is not None:  # personal: noted for the audit log
            reads = self._reads.get(object_type)
            if reads is None:
                reads = self._reads[object_type] = _Reads()
            reads.ids[record.id] = None
            reads.fields[audit_label] = None
        if decision is Decision.MASK and value is not None:
            return mask_value(fspec.mask, str(value))
        return value

    def row_reader(self, object_type: str,
                   field_names: Sequence[str]) -> Callable[[Any], list[Any]]:
        """Read the same fields of many records (a compiled page): the decisions are taken once
        for all of them, then each record's fields are read in order exactly as `reveal` reads
        them (same values, masks, refusals and audit notes). A field that fails comes back as a
        `ReadFailure` holding what `reveal` would have raised."""
        plans = [(self._plans.get((object_type, name)) if self._plans_policy is self.policy
                  else None) or self._read_plan(object_type, name) for name in field_names]
        reveal = self.reveal
        if any(plan.decision in (Decision.DENY, Decision.CONSENTED) or plan.fspec.custom
               for plan in plans):
            def each(record: Any) -> list[Any]:
                out: list[Any] = []
                for name in field_names:
                    try:
                        out.append(reveal(object_type, record, name))
                    except Exception as exc:  # noqa: BLE001 - handed to the caller
                        out.append(ReadFailure(exc))
                return out
            return each
        spec = plans[0].spec if plans else self.policy.spec(object_type)
        steps = [(plan.attribute, place(spec.table, name) if plan.fspec.sealed else None, name,
                  plan.audit_label, plan.fspec.mask if plan.decision is Decision.MASK else None)
                 for name, plan in zip(field_names, plans, strict=True)]
        all_reads = self._reads
        loaded = self._loaded_subjects
        key_for = self._aead

        def careful(record: Any) -> list[Any]:
            out: list[Any] = []
            append = out.append
            reads = None
            for attribute, where, name, label, mask in steps:
                try:
                    value = getattr(record, attribute)
                    if where is not None and value is not None:  # sealed: as `_open` opens
                        record_id = record.id
                        if record_id not in loaded:
                            self.preload([record])
                        try:
                            value = open_at(key_for, where, record_id, value.ciphertext)
                        except FieldDecryptionError:
                            raise SealedFieldError(spec.name, record_id, name) from None
                except Exception as exc:  # noqa: BLE001 - handed to the caller
                    append(ReadFailure(exc))
                    continue
                if label is not None:  # personal: noted for the audit log, as `reveal` does
                    if reads is None:
                        reads = all_reads.get(object_type)
                        if reads is None:
                            reads = all_reads[object_type] = _Reads()
                        reads.ids[record.id] = None
                    reads.fields[label] = None
                if mask is not None and value is not None:
                    value = mask_value(mask, str(value))
                append(value)
            return out

        # The common row, in fewer steps: every attribute in one call, then the sealed ones
        # opened and the masked ones masked in place. Anything unusual (a value that does not
        # open, a missing attribute) sends the row through `careful`, which reads it again
        # field by field; reading and noting are idempotent, so the outcome is the same.
        attributes = [step[0] for step in steps]
        get_all = (operator.attrgetter(*attributes) if len(attributes) > 1
                   else (lambda record: (getattr(record, attributes[0]),)) if attributes
                   else (lambda record: ()))
        sealed_at = [(index, step[1]) for index, step in enumerate(steps) if step[1] is not None]
        masked_at = [(index, step[4]) for index, step in enumerate(steps) if step[4] is not None]
        labels = [step[3] for step in steps if step[3] is not None]

        def read(record: Any) -> list[Any]:
            try:
                out = list(get_all(record))
                if sealed_at:
                    record_id = record.id
                    for index, where in sealed_at:
                        sealed = out[index]
                        if sealed is not None:
                            if record_id not in loaded:
                                self.preload([record])
                            out[index] = open_at(key_for, where, record_id, sealed.ciphertext)
            except Exception:  # noqa: BLE001 - read again, field by field
                return careful(record)
            if labels:
                reads = all_reads.get(object_type)
                if reads is None:
                    reads = all_reads[object_type] = _Reads()
                reads.ids[record.id] = None
                noted = reads.fields
                for label in labels:
                    noted[label] = None
            for index, mask in masked_at:
                value = out[index]
                if value is not None:
                    out[index] = mask_value(mask, str(value))
            return out
        return read

    def _read_plan(self, object_type: str, field_name: str) -> _ReadPlan:
        """Work out once per guard and policy snapshot what reading a field means: its specs,
        the snapshot's decision (itself memoised per policy version), the attribute holding
        it, and the label its reads are audited under (None for a non-personal field)."""
        if self._plans_policy is not self.policy:
            self._plans = {}
            self._plans_policy = self.policy
        spec = self.policy.spec(object_type)
        fspec = spec.field(field_name)
        decision = self.decision(object_type, field_name)
        audit_label = None
        if fspec.personal:
            audit_label = field_name if decision is Decision.ALLOW else f"{field_name}:masked"
        plan = _ReadPlan(spec, fspec, decision, fspec.attr, audit_label)
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

    def _custom_value(self, spec: ObjectSpec, record: Any, fspec: FieldSpec) -> Any:
        key = fspec.attr
        if not fspec.sealed:
            return (record.custom_plain or {}).get(key)
        return self._custom_sealed(spec, record).get(key)

    def _custom_sealed(self, spec: ObjectSpec, record: Any) -> dict[str, Any]:
        opened = self._custom_opened.get(record.id)
        if opened is None:
            blob = record.custom_sealed
            opened = {} if blob is None else json.loads(
                self._open(spec, record, CUSTOM_SEALED.name, blob))
            self._custom_opened[record.id] = opened
        return opened

    def consents(self, contact_id: str, channel: str) -> bool:
        """Whether marketing consent on `channel` is in force for this contact (the newest
        consent event says granted). Looked up for every preloaded record at once."""
        found = self._consent.get((contact_id, channel))
        if found is not None:
            return found
        ids = self._consent_pending | {contact_id}
        self._consent_pending = set()
        rows = self.session.execute(
            select(Consent.contact_id, Consent.channel, Consent.granted)
            .where(Consent.contact_id.in_(ids), Consent.purpose == MARKETING_PURPOSE)
            .order_by(Consent.recorded_at, Consent.id))
        latest: dict[tuple[str, str], bool] = {}
        for row_contact, row_channel, granted in rows:
            latest[(row_contact, row_channel)] = bool(granted)
        channels = {"email", "phone"} | {ch for _, ch in latest}
        for other in ids:
            for ch in channels:
                self._consent[(other, ch)] = latest.get((other, ch), False)
        return self._consent.get((contact_id, channel), False)

    def _aead(self, subject_id: str, version: int) -> PreparedKey | None:
        aead = self._aeads.get((subject_id, version))
        if aead is None:
            key = self._subject_keys.get((subject_id, version))
            if key is None:
                return None
            aead = self._aeads[(subject_id, version)] = prepare_key(key)
        return aead

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

    def seal_fields(self, object_type: str, record: Any, values: Mapping[str, str | None],
                    custom: Mapping[str, Any] | None = None) -> None:
        """Seal `values` (and changes `custom` to the sealed custom values) onto `record` under
        the subject's key for the current version, and keep its blind indexes in step. Every
        sealed value of the row moves to that version."""
        spec = self.policy.spec(object_type)
        plain: dict[str, str | None] = {}
        sealed_custom: dict[str, Any] = {}
        if record.key_version is not None:  # an existing row: re-seal what it already holds
            for fspec in spec.sealed_fields:
                current = getattr(record, fspec.name)
                plain[fspec.name] = (None if current is None
                                     else self._open(spec, record, fspec.name, current))
            sealed_custom = dict(self._custom_sealed(spec, record))
        plain.update(values)
        for name, custom_value in (custom or {}).items():
            if custom_value is None:
                sealed_custom.pop(name, None)
            else:
                sealed_custom[name] = custom_value
        if sealed_custom or getattr(record, "custom_sealed", None) is not None:
            plain[CUSTOM_SEALED.name] = (json.dumps(sealed_custom, sort_keys=True)
                                         if sealed_custom else None)
        self._custom_opened[record.id] = sealed_custom
        # A row not yet in the database (its id just made) has no key to look up.
        version, key = self.keyring.create_subject_key(
            self.session, record.id, new_subject=sa_inspect(record).transient)
        index_key = self.keyring.key(BLIND_INDEX) or b""
        targets = spec.sealed_fields + ((CUSTOM_SEALED,) if CUSTOM_SEALED.name in plain else ())
        for fspec in targets:
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
        return self.keyring.search_index(kind, value)

    # -- audit ------------------------------------------------------------------------------

    def audit_entries(self) -> list[AuditEntry]:
        """One entry per object type read, one per refusal; then forget them."""
        entries = read_entries(self.principal, self.request_id,
                               ((object_type, reads.ids, list(reads.fields))
                                for object_type, reads in self._reads.items()))
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
