"""The tamper-evident audit log: a hash chain, an RFC 9162 Merkle tree, signed checkpoints.

Each entry stores the previous entry's hash and its own, SHA-256 over a canonical JSON encoding
of every column (`canonical`). The same bytes are the leaves of a Merkle tree (RFC 9162: leaf
SHA-256(0x00 || bytes), node SHA-256(0x01 || left || right)). Every `checkpoint_every` entries,
the appliance's Ed25519 key signs a checkpoint note (`security.checkpoint_note`): origin, tree
size, root, time, and the size by which the next checkpoint is promised.

`verify` walks the log once, keeping the chain and an O(log n) compact tree, and names the first
entry that no longer matches: an edited, deleted, inserted or reordered row breaks the chain at
that row, and a log rewritten from some row on no longer has the root the next signed
checkpoint states. Inclusion and consistency proofs (`security.audit_evidence`) let anyone check
exported entries and checkpoints against the public key alone (`security.verify_standalone`).

Appending signs a checkpoint by growing the tree from where the previous checkpoint left it:
its compact tree is kept in the settings row `audit_tree`, checked against that checkpoint's
signed root before use and rebuilt from the entries when it does not match.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import CursorResult, func, insert, select, update
from sqlalchemy.orm import Session

from security import checkpoint_note
from security.errors import EnclaveError
from security.keys import AUDIT_SIGNING, KeyRing
from security.merkle import Frontier, leaf_hash
from storage.models import AuditCheckpoint, AuditEvent, AuditHead, Setting

GENESIS_HASH = "0" * 64
#: Settings row holding the compact Merkle tree as of the last checkpoint.
TREE_SETTING = "audit_tree"
#: Set in `session.info` when a checkpoint was signed in the session (for shipping it).
CHECKPOINT_SIGNED = "enclave.audit.checkpoint_signed"

log = logging.getLogger("enclave.audit")

#: The columns `canonical` reads, for Core queries that walk the log.
CANONICAL_COLUMNS = (
    AuditEvent.seq, AuditEvent.ts, AuditEvent.actor, AuditEvent.roles, AuditEvent.action,
    AuditEvent.object_type, AuditEvent.object_ids, AuditEvent.fields, AuditEvent.decision,
    AuditEvent.reason, AuditEvent.request_id, AuditEvent.prev_hash,
)


@dataclass(frozen=True)
class AuditEntry:
    actor: str
    roles: Sequence[str]
    action: str
    object_type: str | None = None
    object_ids: Sequence[str] = ()
    fields: Sequence[str] = ()
    decision: str = "allow"
    reason: str | None = None
    request_id: str | None = None


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: object) -> str:
    """JSON as the chain hashes it: sorted keys, no spaces, UTF-8 rather than escapes (one
    encoder made once: `json.dumps` builds a new one on every call with these options)."""
    return _CANONICAL.encode(value)


def canonical(row: AuditEvent | Any) -> bytes:
    document = {
        "seq": row.seq, "ts": row.ts, "actor": row.actor, "roles": json.loads(row.roles),
        "action": row.action, "object_type": row.object_type,
        "object_ids": json.loads(row.object_ids), "fields": json.loads(row.fields),
        "decision": row.decision, "reason": row.reason, "request_id": row.request_id,
        "prev_hash": row.prev_hash,
    }
    return canonical_json(document).encode("utf-8")


def entry_hash(row: AuditEvent | Any) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def entry_leaf(row: AuditEvent | Any) -> bytes:
    """The entry's Merkle leaf hash."""
    return leaf_hash(canonical(row))


def _legacy_message(seq: int, hash_: str, ts: str, next_due: int) -> bytes:
    """What checkpoints signed before signed notes signed (chain hash, not Merkle root)."""
    return f"enclave-audit-checkpoint/v1\n{seq}\n{hash_}\n{ts}\n{next_due}\n".encode()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def ensure_head(session: Session) -> None:
    if session.get(AuditHead, 1) is None:
        # checkpoint_due=1: the very first append is signed at once, so a log that has entries
        # but no checkpoint at all has lost them.
        session.add(AuditHead(id=1, seq=0, hash=GENESIS_HASH, checkpoint_due=1))
        session.flush()


HEAD_FOR_UPDATE = (select(AuditHead.seq, AuditHead.hash, AuditHead.checkpoint_due)
                   .where(AuditHead.id == 1).with_for_update())
_MOVE_HEAD = update(AuditHead).where(AuditHead.id == 1)


def append(session: Session, entries: Iterable[AuditEntry], *, keyring: KeyRing,
           checkpoint_every: int = 64) -> list[int]:
    """Append entries in the caller's transaction; returns their sequence numbers. Signs a
    checkpoint when one falls due. (On PostgreSQL the usual batch goes through
    `security.audit_statement` instead, in one statement; this is its fallback, and the way
    on SQLite.)"""
    entries = list(entries)
    if not entries:
        return []
    # The head row is the lock that keeps concurrent appenders in one order.
    seq, prev_hash, due = session.execute(HEAD_FOR_UPDATE).one()
    rows = _chained(entries, seq, prev_hash)
    seq, prev_hash = rows[-1]["seq"], rows[-1]["hash"]
    head: dict[str, Any] = {"seq": seq, "hash": prev_hash}
    session.execute(insert(AuditEvent), rows)
    if seq >= due:
        head["checkpoint_due"] = _sign_checkpoint(session, keyring, seq, checkpoint_every,
                                                  appended=rows).next_due
    session.execute(_MOVE_HEAD.values(**head))
    return [int(row["seq"]) for row in rows]


def _chained(entries: Sequence[AuditEntry], seq: int, prev_hash: str) -> list[dict[str, Any]]:
    """The rows of `entries` appended after entry `seq` of hash `prev_hash`, each chained to
    the one before it, with its Merkle leaf hash."""
    rows: list[dict[str, Any]] = []
    for entry in entries:
        seq += 1
        values = {
            "seq": seq, "ts": _now(), "actor": entry.actor,
            "roles": canonical_json(list(entry.roles)), "action": entry.action,
            "object_type": entry.object_type,
            "object_ids": canonical_json(list(entry.object_ids)),
            "fields": canonical_json(list(entry.fields)),
            "decision": entry.decision, "reason": entry.reason, "request_id": entry.request_id,
            "prev_hash": prev_hash,
        }
        data = canonical(SimpleNamespace(**values))
        values["hash"] = prev_hash = hashlib.sha256(data).hexdigest()
        values["leaf"] = leaf_hash(data).hex()
        rows.append(values)
    return rows


def _sign_checkpoint(session: Session, keyring: KeyRing, seq: int,
                     checkpoint_every: int,
                     appended: Sequence[dict[str, Any]] = ()) -> AuditCheckpoint:
    """Sign the tree of entries 1..seq as a checkpoint note. The note also promises the next
    checkpoint by `next_due`, so deleting later checkpoints (to hide a rewritten tail) breaks a
    signed promise. The caller holds the head row's lock; `appended`: the rows it has just
    inserted (the last entries up to `seq`), whose leaves need not be read back."""
    tree = _grown_tree(session, seq, appended)
    _save_tree(session, tree)
    values = _signed(checkpoint_note.appliance_origin(session), keyring, seq, tree.root(),
                     checkpoint_every)
    return _store_checkpoint(session, values)


def _signed(name: str, keyring: KeyRing, seq: int, root: bytes,
            checkpoint_every: int) -> dict[str, Any]:
    """The `audit_checkpoints` row of a note signed now, by the log named `name`, for the
    tree of size `seq`."""
    ts = _now()
    next_due = seq + checkpoint_every
    version = keyring.current_version(AUDIT_SIGNING)
    line = checkpoint_note.sign(checkpoint_note.body(name, seq, root, ts, next_due), name,
                                keyring.signing_key(AUDIT_SIGNING, version))
    return {"seq": seq, "hash": root.hex(), "ts": ts, "next_due": next_due,
            "key_version": version, "signature": line}


def _store_checkpoint(session: Session, values: dict[str, Any]) -> AuditCheckpoint:
    session.execute(insert(AuditCheckpoint).values(**values))
    session.info[CHECKPOINT_SIGNED] = True
    return AuditCheckpoint(**values)  # a detached copy for the caller to read


def last_signed(session: Session) -> int:
    """The size of the tree the latest checkpoint signs (0: none yet)."""
    return int(session.scalar(select(func.max(AuditCheckpoint.seq))) or 0)


#: The PostgreSQL advisory lock (transaction level) a signer holds from reading the log's end
#: until its checkpoint is stored. Each worker's signer is woken at the same count, so without
#: it every worker grew the tree and signed, and all but one threw the work away (measured:
#: signing took about 8% of a worker's CPU under the trusted read benchmark).
SIGNER_LOCK = 0x656E636C61766531  # "enclave1"


def sign_ahead(sessions: Callable[[], Session], keyring: KeyRing, *,
               checkpoint_every: int, at_least: int = 1) -> int | None:
    """Sign the log's end without holding appends up, if at least `at_least` entries there
    are unsigned; returns the size the latest checkpoint signs afterwards (0: the log is
    empty), or None when another signer is at work (it signs what this one would have).

    Signing at the count (`append`) holds the head row's lock, which every appender waits on,
    while it reads the leaves since the last checkpoint, grows the tree and signs. Here that
    work is done first, on committed entries and holding no row lock (entries up to the head's
    size are committed with it and never change); then a short transaction takes the head
    lock and stores the checkpoint with its tree, unless another checkpoint was stored since
    (this one then reports that one's size; the caller need not sign again). The count
    stays the backstop: a batch that would cross the promised size still signs in its own
    transaction."""
    with sessions() as reading, reading.begin():
        postgresql = reading.get_bind().dialect.name == "postgresql"
        if postgresql:
            # One snapshot for the head, the last checkpoint and its stored tree: read one by
            # one, a checkpoint stored in between would look like a tree that does not match.
            reading.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            if not reading.scalar(select(func.pg_try_advisory_xact_lock(SIGNER_LOCK))):
                return None
        size = int(reading.scalar(select(AuditHead.seq).where(AuditHead.id == 1)) or 0)
        last = last_signed(reading)
        if size - last < max(1, at_least):
            return last
        tree = _grown_tree(reading, size)
        name = checkpoint_note.appliance_origin(reading)
        if postgresql:
            # Signed and stored while the reading transaction still holds the signers' lock:
            # a signer woken meanwhile finds the lock taken, not a log that looks unsigned.
            return _sign_and_store(sessions, keyring, name, tree, last, checkpoint_every)
    # SQLite has one writer at a time (and a transaction that reads holds it): the reading
    # transaction ends first.
    return _sign_and_store(sessions, keyring, name, tree, last, checkpoint_every)


def _sign_and_store(sessions: Callable[[], Session], keyring: KeyRing, name: str,
                    tree: Frontier, last: int, checkpoint_every: int) -> int:
    """Sign `tree` (the log as it was when the latest checkpoint signed `last`) and store it;
    the size the latest checkpoint signs afterwards."""
    values = _signed(name, keyring, tree.size, tree.root(), checkpoint_every)
    with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            # One statement, on its own (autocommit): the head row, which every appender
            # waits on, is locked inside the server only, never across round trips from
            # this thread, which waits for the interpreter behind a busy event loop
            # (migration 0008 says what that cost).
            session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
            signed = int(session.scalar(select(func.audit_store_checkpoint(
                values["seq"], values["hash"], values["ts"], values["next_due"],
                values["key_version"], values["signature"], last, _tree_json(tree)))) or last)
            if signed == tree.size:
                session.info[CHECKPOINT_SIGNED] = True  # shipped once the session commits
            return signed
        head = session.execute(HEAD_FOR_UPDATE).one()
        now_last = last_signed(session)
        if now_last != last:
            # Another signer stored a newer checkpoint meanwhile: the count, `enclave audit
            # checkpoint`, or (on SQLite, which has no signers' lock) another worker.
            return now_last
        if head.seq >= values["next_due"]:
            # The log outgrew the promise while this was signed: the next append signs at
            # the count (storing this one would leave a promise broken until then).
            return last
        _save_tree(session, tree)
        _store_checkpoint(session, values)
        session.execute(_MOVE_HEAD.values(checkpoint_due=values["next_due"]))
    return tree.size


def _grown_tree(session: Session, seq: int,
                appended: Sequence[dict[str, Any]] = ()) -> Frontier:
    """The compact Merkle tree of entries 1..seq, grown from the one the last checkpoint left
    (rebuilt from every entry when that one is missing or does not match its signed root).
    `appended`: rows this transaction inserted, ending at `seq`, hashed as they were written
    rather than read back. Reads only: whoever stores a checkpoint of it saves it too."""
    stored = _load_tree(session)
    last = session.execute(
        select(AuditCheckpoint.seq, AuditCheckpoint.hash, AuditCheckpoint.signature)
        .order_by(AuditCheckpoint.seq.desc()).limit(1)).first()
    if (stored is not None and last is not None and stored.size == last.seq <= seq
            and checkpoint_note.signature_name(last.signature) is not None
            and stored.root().hex() == last.hash):
        tree, rebuild = stored, False
    else:
        if stored is not None:
            log.warning("the stored audit Merkle tree does not match the last signed "
                        "checkpoint; rebuilding it from the entries")
        tree, rebuild = Frontier(), True
    known = [row for row in appended if row["seq"] > tree.size]
    if not known or known[-1]["seq"] != seq or \
            [row["seq"] for row in known] != list(range(known[0]["seq"], seq + 1)):
        known = []
    read_to = known[0]["seq"] - 1 if known else seq
    # Rebuilding (something did not match): every leaf made afresh from the columns.
    leaves = itertools.chain(
        _leaves_from_columns(session, tree.size, read_to) if rebuild
        else _stored_leaves(session, tree.size, read_to),
        ((row["seq"], bytes.fromhex(row["leaf"])) for row in known))
    for entry_seq, leaf in leaves:
        if entry_seq != tree.size + 1:
            raise EnclaveError(f"audit entry {tree.size + 1} is missing; no checkpoint can be "
                               "signed: run `enclave audit verify`")
        tree.append(leaf)
    if tree.size != seq:
        raise EnclaveError(f"the audit log ends at {tree.size}, not {seq}; no checkpoint can be "
                           "signed: run `enclave audit verify`")
    return tree


def _stored_leaves(session: Session, after: int, to: int) -> Iterator[tuple[int, bytes]]:
    """(seq, leaf hash) of the entries after `after` up to `to`, in order: the leaf the
    appender stored, or for an entry appended before leaves were stored, made from its
    columns."""
    rows = select(AuditEvent.seq, AuditEvent.leaf).where(
        AuditEvent.seq > after, AuditEvent.seq <= to).order_by(AuditEvent.seq)
    if to - after > 1000:  # a rebuild: stream rather than hold every leaf at once
        rows = rows.execution_options(yield_per=1000)
    for entry_seq, leaf in session.execute(rows):
        if leaf is None:
            yield entry_seq, _leaf_from_columns(session, entry_seq)
            continue
        try:
            found = bytes.fromhex(leaf)
        except ValueError:
            found = b""
        if len(found) != 32:
            raise EnclaveError(f"audit entry {entry_seq} no longer holds what was appended; no "
                               "checkpoint can be signed: run `enclave audit verify`")
        yield entry_seq, found


def _leaf_from_columns(session: Session, entry_seq: int) -> bytes:
    return next(_leaves_from_columns(session, entry_seq - 1, entry_seq))[1]


def _leaves_from_columns(session: Session, after: int, to: int) -> Iterator[tuple[int, bytes]]:
    rows = select(*CANONICAL_COLUMNS).where(
        AuditEvent.seq > after, AuditEvent.seq <= to).order_by(AuditEvent.seq)
    if to - after > 1000:
        rows = rows.execution_options(yield_per=1000)
    for row in session.execute(rows):
        try:
            yield row.seq, entry_leaf(row)
        except (ValueError, TypeError):
            raise EnclaveError(f"audit entry {row.seq} no longer holds what was appended; no "
                               "checkpoint can be signed: run `enclave audit verify`") from None


def _load_tree(session: Session) -> Frontier | None:
    value = session.scalar(select(Setting.value).where(Setting.key == TREE_SETTING))
    if value is None:
        return None
    try:
        state = json.loads(value)
        return Frontier(int(state["size"]), [bytes.fromhex(h) for h in state["hashes"]])
    except (ValueError, KeyError, TypeError):
        return None


def _tree_json(tree: Frontier) -> str:
    return canonical_json({"size": tree.size, "hashes": [h.hex() for h in tree.hashes]})


def _save_tree(session: Session, tree: Frontier) -> None:
    value = _tree_json(tree)
    changed = cast(CursorResult[Any], session.execute(
        update(Setting).where(Setting.key == TREE_SETTING).values(value=value)))
    if not changed.rowcount:
        session.execute(insert(Setting).values(key=TREE_SETTING, value=value))


def checkpoint_now(session: Session, keyring: KeyRing, *,
                   checkpoint_every: int = 64) -> AuditCheckpoint | None:
    """Sign the current head, unless it is already signed or the log is empty."""
    seq = session.execute(
        select(AuditHead.seq).where(AuditHead.id == 1).with_for_update()
    ).scalar_one()
    if seq == 0 or session.get(AuditCheckpoint, seq) is not None:
        return None
    checkpoint = _sign_checkpoint(session, keyring, seq, checkpoint_every)
    session.execute(update(AuditHead).where(AuditHead.id == 1)
                    .values(checkpoint_due=checkpoint.next_due))
    return checkpoint


@dataclass
class VerifyReport:
    entries: int = 0
    checkpoints: int = 0
    first_bad_seq: int | None = None
    problem: str | None = None
    last_checkpoint: int | None = None
    #: The Merkle tree of the whole log as verified (root in hex).
    tree_size: int = 0
    root: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.first_bad_seq is None


def verify(session: Session, keyring: KeyRing) -> VerifyReport:
    report = VerifyReport()
    public_keys: dict[int, Ed25519PublicKey] = {
        v: keyring.signing_key(AUDIT_SIGNING, v).public_key()
        for v in keyring.versions(AUDIT_SIGNING)
    }
    checkpoints = {c.seq: c for c in session.scalars(select(AuditCheckpoint))}
    origin = checkpoint_note.appliance_origin(session)
    tree = Frontier()
    good_checkpoint = 0
    promised_by = 0  # the next checkpoint the last good one promised

    def fail(seq: int, problem: str) -> VerifyReport:
        report.first_bad_seq, report.problem = seq, problem
        return report

    expected_seq, prev_hash = 1, GENESIS_HASH
    rows = session.execute(select(AuditEvent).order_by(AuditEvent.seq).execution_options(
        yield_per=1000)).scalars()
    try:  # an early return must not leave the (server-side, yield_per) cursor open
        for row in rows:
            if row.seq != expected_seq:
                return fail(expected_seq,
                            f"entry {expected_seq} is missing (next entry is {row.seq})")
            if row.prev_hash != prev_hash:
                return fail(row.seq, f"entry {row.seq} does not follow entry {row.seq - 1}")
            try:
                data = canonical(row)
            except (ValueError, TypeError):  # a column no longer holds what append wrote
                data = None
            if data is None or hashlib.sha256(data).hexdigest() != row.hash:
                return fail(row.seq, f"entry {row.seq} was altered (its hash no longer matches)")
            leaf = leaf_hash(data)
            if row.leaf is not None and row.leaf != leaf.hex():
                # What checkpoints are signed from: one that is not the entry's own would have
                # the next checkpoint sign another tree.
                return fail(row.seq, f"entry {row.seq}'s stored leaf hash is not its own")
            tree.append(leaf)
            checkpoint = checkpoints.get(row.seq)
            if checkpoint is not None:
                problem = _checkpoint_problem(checkpoint, row.hash, tree, public_keys, origin)
                if problem:
                    # Everything after the last good checkpoint is no longer proven.
                    return fail(good_checkpoint + 1, problem)
                good_checkpoint = row.seq
                promised_by = checkpoint.next_due
                report.checkpoints += 1
            prev_hash = row.hash
            expected_seq += 1
            report.entries += 1
    finally:
        rows.close()
    last_seq = expected_seq - 1
    beyond = [seq for seq in checkpoints if seq > last_seq]
    if beyond:
        return fail(last_seq + 1, f"the log ends at {last_seq} but a signed checkpoint "
                                  f"covers entry {max(beyond)}: entries were removed")
    if last_seq > 0 and good_checkpoint == 0:
        return fail(1, "the log has entries but no valid signed checkpoint: checkpoints were "
                       "removed")
    if good_checkpoint and last_seq >= promised_by:
        return fail(good_checkpoint + 1,
                    f"the checkpoint at {good_checkpoint} promised the next one by entry "
                    f"{promised_by}, but none follows it: later checkpoints were removed")
    head = session.get(AuditHead, 1)
    if head is not None and (head.seq, head.hash) != (last_seq, prev_hash):
        if head.seq > last_seq:
            return fail(last_seq + 1, f"the log ends at {last_seq} but its head says {head.seq}")
        return fail(head.seq + 1 if head.seq < last_seq else last_seq,
                    "the log's head does not match its last entry")
    report.last_checkpoint = good_checkpoint or None
    report.tree_size, report.root = tree.size, tree.root().hex()
    if last_seq > good_checkpoint:
        report.notes.append(
            f"entries {good_checkpoint + 1}-{last_seq} are chained but not yet signed")
    return report


def _checkpoint_problem(checkpoint: AuditCheckpoint, chain_hash: str, tree: Frontier,
                        public_keys: dict[int, Ed25519PublicKey], origin: str) -> str | None:
    key = public_keys.get(checkpoint.key_version)
    if key is None:
        return f"checkpoint at {checkpoint.seq} names an unknown signing key"
    name = checkpoint_note.signature_name(checkpoint.signature)
    if name is None:  # signed before checkpoints were notes: it signs the chain hash
        try:
            key.verify(base64.b64decode(checkpoint.signature),
                       _legacy_message(checkpoint.seq, checkpoint.hash, checkpoint.ts,
                                       checkpoint.next_due))
        except (InvalidSignature, ValueError):
            return f"checkpoint at {checkpoint.seq} has a bad signature"
        if checkpoint.hash != chain_hash:
            return f"the chain up to entry {checkpoint.seq} differs from its signed checkpoint"
        return None
    if not checkpoint_note.verify_row(checkpoint, key):
        return f"checkpoint at {checkpoint.seq} has a bad signature"
    if name != origin:
        return f"checkpoint at {checkpoint.seq} belongs to another log ({name})"
    if checkpoint.hash != tree.root().hex():
        return (f"the log up to entry {checkpoint.seq} differs from its signed checkpoint "
                "(another Merkle root)")
    return None


def count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(AuditEvent)) or 0
