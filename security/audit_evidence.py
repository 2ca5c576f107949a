"""Evidence exports: selected audit entries with the proofs that they are in the signed log.

One pass over the log, up to its latest signed checkpoint, with an O(log n) compact tree: it
checks every checkpoint's root on the way (an export of a log that no longer matches its own
checkpoints is refused), proves each checkpoint consistent with the one before it, and collects
the nodes of each selected entry's inclusion proof against the latest checkpoint. The appliance
then signs a manifest naming that tree and every exported sequence number, so an entry removed
from the file is caught too. The format is described (and checked) by
`security.verify_standalone`, which needs nothing but the public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from security import checkpoint_note
from security.audit import CANONICAL_COLUMNS, canonical
from security.errors import EnclaveError
from security.keys import AUDIT_SIGNING, KeyRing
from security.merkle import Frontier, NodeCollector, consistency_ranges, inclusion_ranges, leaf_hash
from security.verify_standalone import EVIDENCE_FORMAT
from storage.models import AuditCheckpoint, AuditEvent


@dataclass(frozen=True)
class ExportSummary:
    events: int
    tree_size: int
    root: str
    checkpoints: int
    origin: str
    #: Selected events newer than the latest checkpoint: provable after the next one.
    unsigned: int = 0


def latest_checkpoint(session: Session) -> AuditCheckpoint | None:
    """The newest checkpoint in signed-note form (older rows may predate notes)."""
    for row in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc())):
        if checkpoint_note.signature_name(row.signature) is not None:
            return row
    return None


def _b64(values: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(v).decode() for v in values]


def _line(out: TextIO, item: dict[str, Any]) -> None:
    # ASCII only: no character of an entry (U+2028, say) can split a line anywhere
    out.write(json.dumps(item, separators=(",", ":")) + "\n")


def seq_ranges(seqs: Sequence[int]) -> str:
    """1,2,3,7,9,10 -> "1-3,7,9-10" ("-" when empty)."""
    parts: list[str] = []
    start = previous = None
    for seq in [*seqs, None]:
        if start is not None and (seq is None or previous is None or seq != previous + 1):
            parts.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = None
        if start is None:
            start = seq
        previous = seq
    return ",".join(parts) or "-"


def write_export(session: Session, keyring: KeyRing, out: TextIO, *, selected: Sequence[Any],
                 filters: dict[str, str], exported_by: str, unsigned: int = 0) -> ExportSummary:
    """Write the evidence for `selected` (rows with the canonical columns, in sequence order,
    none beyond the latest checkpoint) to `out`."""
    latest = latest_checkpoint(session)
    if latest is None:
        raise EnclaveError("the audit log has no signed checkpoint yet: run "
                           "`enclave audit checkpoint` first")
    size = latest.seq
    if any(row.seq > size for row in selected):
        raise ValueError("selected entries must not go beyond the latest checkpoint")
    chain = [row for row in session.scalars(
        select(AuditCheckpoint).where(AuditCheckpoint.seq <= size).order_by(AuditCheckpoint.seq))
        if checkpoint_note.signature_name(row.signature) is not None]
    name = checkpoint_note.signature_name(latest.signature) or ""
    exported_by = "".join(c if c >= " " else "?" for c in exported_by)  # one line of a note
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    key = keyring.signing_key(AUDIT_SIGNING, latest.key_version)
    raw = checkpoint_note.raw_public_key(key)
    _line(out, {
        "format": EVIDENCE_FORMAT, "origin": name,
        "exported_at": now,
        "exported_by": exported_by, "filters": filters, "tree_size": size,
        "events": len(selected), "checkpoints": len(chain),
        "key": {"name": name, "key_id": checkpoint_note.key_id(name, raw).hex(),
                "ed25519": base64.b64encode(raw).decode(),
                "verifier_key": checkpoint_note.verifier_key(name, raw)},
    })

    events = NodeCollector()  # inclusion proofs against `size`, known at the end of the walk
    for row in selected:
        events.want(inclusion_ranges(row.seq - 1, size))
    steps = NodeCollector()  # one consistency proof at a time, between neighbouring checkpoints
    tree = Frontier()
    previous: tuple[int, dict[tuple[int, int], bytes]] | None = None
    pending = iter(chain)
    checkpoint = next(pending, None)

    def collect(level: int, index: int, node: bytes) -> None:
        events.collect(level, index, node)
        steps.collect(level, index, node)

    rows = session.execute(select(*CANONICAL_COLUMNS).where(AuditEvent.seq <= size)
                           .order_by(AuditEvent.seq).execution_options(yield_per=1000))
    try:
        for row in rows:
            if row.seq != tree.size + 1:
                raise _mismatch(tree.size + 1, "is missing")
            try:
                tree.append(leaf_hash(canonical(row)), collect)
            except (ValueError, TypeError):
                raise _mismatch(row.seq, "no longer holds what was appended") from None
            while checkpoint is not None and checkpoint.seq == tree.size:
                if checkpoint.hash != tree.root().hex():
                    raise _mismatch(checkpoint.seq, "ends a log that differs from its signed "
                                    "checkpoint")
                proof = None
                if previous is not None:
                    old, known = previous
                    proof = _b64(steps.proof(consistency_ranges(old, tree.size), known=known))
                _line(out, {"checkpoint": checkpoint_note.row_note(checkpoint),
                            "consistency": proof})
                previous = (tree.size, tree.pieces())
                steps.forget()
                checkpoint = next(pending, None)
                if checkpoint is not None:
                    steps.want(consistency_ranges(tree.size, checkpoint.seq), known=previous[1])
    finally:
        rows.close()
    if tree.size != size or checkpoint is not None:
        raise _mismatch(tree.size + 1, "is missing")

    for row in selected:
        document = json.loads(canonical(row))
        _line(out, {"event": document, "leaf_index": row.seq - 1,
                    "leaf_hash": leaf_hash(canonical(row)).hex(),
                    "inclusion": _b64(events.proof(inclusion_ranges(row.seq - 1, size))),
                    "tree_size": size})

    root = bytes.fromhex(latest.hash)
    manifest = (f"{EVIDENCE_FORMAT}\norigin {name}\ntree {size} "
                f"{base64.b64encode(root).decode()}\n"
                f"time {now}\n"
                f"by {exported_by}\n"
                f"filters {json.dumps(filters, sort_keys=True, separators=(',', ':'))}\n"
                f"events {len(selected)} {seq_ranges([row.seq for row in selected])}\n")
    current = keyring.signing_key(AUDIT_SIGNING, keyring.current_version(AUDIT_SIGNING))
    _line(out, {"manifest": checkpoint_note.note(manifest,
                                                 checkpoint_note.sign(manifest, name, current))})
    return ExportSummary(len(selected), size, latest.hash, len(chain), name, unsigned)


def _mismatch(seq: int, what: str) -> EnclaveError:
    return EnclaveError(f"audit entry {seq} {what}: the log does not match its signed "
                        "checkpoints, so it proves nothing; run `enclave audit verify`")
