#!/usr/bin/env python3
"""enclave-verify: check Enclave audit evidence on any machine, without Enclave or its database.

Needs only Python 3.11+ and the `cryptography` package: copy this one file to an offline machine
and run `python3 verify_standalone.py EXPORT --key KEY`. It trusts nothing in the export itself,
only the appliance public key you give it (print it on the appliance with
`enclave audit public-key`).

    enclave-verify EXPORT --key KEY [--checkpoints SHIPPED]
    enclave-verify --checkpoints SHIPPED --key KEY

Exit status: 0 when everything holds, 1 when the evidence is rejected (one line on stderr names
the first failure), 2 when an input cannot be read at all.

What is checked
- Every checkpoint is a signed note (c2sp.org/signed-note, c2sp.org/tlog-checkpoint) signed by
  the given key: "<origin>\\n<tree size>\\n<base64 RFC 9162 root>\\n" plus the extension lines
  "time <ISO 8601>" and "next <n>", a blank line, and "— <key name> <base64(key ID || Ed25519
  signature)>". The key ID is SHA-256(name || 0x0A || 0x01 || public key)[:4].
- Checkpoints in file order never shrink; two of one size have one root; each is consistent
  with the one before it (RFC 9162 2.1.4 consistency proof).
- Every event hashes to its leaf (SHA-256(0x00 || canonical JSON)) and its inclusion proof
  (RFC 9162 2.1.3) leads to the root of the latest checkpoint.
- The appliance's signed manifest names the tree the proofs use and the sequence numbers of
  every exported event, so an event removed from (or added to) the file is caught.
- Checkpoints shipped off the appliance (`--checkpoints`: syslog/SIEM captures or plain notes)
  are signed by the key, never shrink, and each equals the export's checkpoint of the same
  size; one beyond the export's latest means the log was truncated after it was shipped.

The export is JSON lines: a header {"format": "enclave-audit-evidence/v1", ...}, then
{"checkpoint": NOTE, "consistency": [base64, ...] | null} oldest first, then
{"event": {...}, "leaf_index": i, "leaf_hash": hex, "inclusion": [base64, ...], "tree_size": n},
then {"manifest": NOTE}.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EVIDENCE_FORMAT = "enclave-audit-evidence/v1"
SIGNATURE_PREFIX = "\u2014 "  # em dash, space
ED25519 = 0x01
MAX_SIGNATURES = 100
EXIT_OK, EXIT_REJECTED, EXIT_UNREADABLE = 0, 1, 2


class Rejected(Exception):
    """The evidence does not hold. The message names the first failure."""


class Unreadable(Exception):
    """An input is not what it should be at all (not a key, not an export)."""


# -- RFC 9162 section 2.1 ------------------------------------------------------------------------

def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does `proof` lead from leaf `index` to the root of a tree of `size`?"""
    if not 0 <= index < size or any(len(p) != 32 for p in proof):
        return False
    fn, sn, node = index, size - 1, leaf
    for sibling in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            node = node_hash(sibling, node)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            node = node_hash(node, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and _equal(node, root)


def verify_consistency(size1: int, size2: int, root1: bytes, root2: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree (size2, root2) an extension of (size1, root1)?"""
    if not 0 <= size1 <= size2 or any(len(p) != 32 for p in proof):
        return False
    if size1 == size2:
        return not proof and _equal(root1, root2)
    if size1 == 0:
        return not proof  # every tree extends the empty one
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # a power of two: the old root is a node of the new tree
        path.insert(0, root1)
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    old = new = path[0]
    for node in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            old, new = node_hash(node, old), node_hash(node, new)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            new = node_hash(new, node)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and _equal(old, root1) and _equal(new, root2)


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes an audit entry is hashed as: JSON, sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


# -- keys and signed notes (c2sp.org/signed-note) -----------------------------------------------

def key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ED25519]) + public_key).digest()[:4]


@dataclass(frozen=True)
class Key:
    """A trusted Ed25519 key; `name` is None for a bare key, which then vouches for the name
    each signature line gives (the key ID binds them)."""

    raw: bytes
    name: str | None = None

    @property
    def public(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)

    def matches(self, name: str, id_: bytes) -> bool:
        return (self.name is None or self.name == name) and _equal(key_id(name, self.raw), id_)


def _b64(text: str) -> bytes:
    try:
        value = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"not base64: {text[:40]!r}") from None
    if base64.b64encode(value).decode() != text:
        raise ValueError(f"not canonical base64: {text[:40]!r}")
    return value


def parse_key(text: str) -> Key:
    """A verifier key "<name>+<hex key ID>+<base64(0x01 || key)>" or a bare base64 key."""
    text = text.strip()
    try:
        if not text.endswith("="):  # a verifier key's 33 bytes need no padding; a bare key does
            name, id_hex, encoded = text.split("+", 2)
            blob = _b64(encoded)
            if not name or len(blob) != 33 or blob[0] != ED25519:
                raise ValueError("not an Ed25519 verifier key")
            if key_id(name, blob[1:]).hex() != id_hex.lower():
                raise ValueError("its key ID does not match its name and key")
            return Key(blob[1:], name)
        raw = _b64(text)
    except ValueError as exc:  # also a verifier key without its three parts
        raise Unreadable(f"not a public key ({exc})") from None
    if len(raw) != 32:
        raise Unreadable("not a public key (an Ed25519 key is 32 bytes)")
    return Key(raw)


def _usable(key: Key) -> Key:
    try:
        key.public  # noqa: B018 -- refuse a key cryptography cannot load, up front
    except ValueError:
        raise Unreadable("not an Ed25519 public key") from None
    return key


def load_keys(values: Iterable[str]) -> list[Key]:
    """Keys given literally or as files holding one key a line."""
    keys = []
    for value in values:
        path = Path(value)
        lines = path.read_text().splitlines() if path.is_file() else [value]
        keys += [_usable(parse_key(line)) for line in lines
                 if line.strip() and not line.startswith("#")]
    if not keys:
        raise Unreadable("no public key given")
    return keys


@dataclass(frozen=True)
class Note:
    text: str  # the signed text, ending in a newline
    signatures: tuple[tuple[str, bytes, bytes], ...]  # (key name, key ID, signature)


def parse_note(note: str) -> Note:
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise ValueError("a note holds no control characters")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise ValueError("no signature block")
    text, lines = note[:cut + 1], note[cut + 2:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ValueError("too many signatures")
    signatures = []
    for line in lines:
        if not line.startswith(SIGNATURE_PREFIX) or line.count(" ") != 2:
            raise ValueError(f"malformed signature line {line[:60]!r}")
        name, encoded = line[len(SIGNATURE_PREFIX):].split(" ")
        blob = _b64(encoded)
        if not name or "+" in name or len(blob) < 5:
            raise ValueError(f"malformed signature line {line[:60]!r}")
        signatures.append((name, blob[:4], blob[4:]))
    return Note(text, tuple(signatures))


def signed_by(note: Note, keys: Sequence[Key]) -> str | None:
    """None when a trusted key signed the note; otherwise why not."""
    verified = False
    for name, id_, signature in note.signatures:
        for key in keys:
            if key.matches(name, id_):
                try:
                    key.public.verify(signature, note.text.encode())
                except InvalidSignature:
                    return "has a bad signature"
                verified = True
    if verified:
        return None
    names = ", ".join(f"{n} {i.hex()}" for n, i, _ in note.signatures)
    return f"is not signed by the given key (it names {names})"


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: dict[str, str]
    note: Note

    @property
    def time(self) -> str:
        return self.extensions.get("time", "?")


def parse_checkpoint(text: str) -> Checkpoint:
    note = parse_note(text)
    lines = note.text.split("\n")[:-1]
    if len(lines) < 3 or not lines[0] or any(not line for line in lines):
        raise ValueError("a checkpoint has an origin, a size and a root, one a line")
    origin, size, root = lines[:3]
    if not re.fullmatch(r"0|[1-9][0-9]*", size):
        raise ValueError(f"tree size {size[:20]!r} is not a number")
    digest = _b64(root)
    if len(digest) != 32:
        raise ValueError("the root is not a SHA-256 hash")
    extensions = dict(line.partition(" ")[::2] for line in lines[3:])
    return Checkpoint(origin, int(size), digest, extensions, note)


# -- evidence --------------------------------------------------------------------------------------

@dataclass
class Report:
    origin: str = ""
    tree_size: int = 0
    checkpoint_time: str = ""
    events: int = 0
    checkpoints: int = 0
    shipped: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.checkpoints:
            parts.append(f"{self.events} events proven in {self.origin} at tree size "
                         f"{self.tree_size} (checkpoint of {self.checkpoint_time}); "
                         f"{self.checkpoints} checkpoints consistent")
        if self.shipped:
            parts.append(f"{self.shipped} shipped checkpoints match")
        return "OK: " + "; ".join(parts)


def _checkpoint(text: Any, where: str) -> Checkpoint:
    if not isinstance(text, str):
        raise Rejected(f"{where} is not a note")
    try:
        return parse_checkpoint(text)
    except ValueError as exc:
        raise Rejected(f"{where} is not a checkpoint: {exc}") from None


def _hashes(values: Any, where: str) -> list[bytes]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise Rejected(f"{where} is not a list of hashes")
    try:
        return [_b64(v) for v in values]
    except ValueError as exc:
        raise Rejected(f"{where}: {exc}") from None


def check_chain(checkpoints: Sequence[tuple[Checkpoint, list[bytes] | None]], keys: Sequence[Key],
                *, what: str = "checkpoint", origin: str | None = None) -> None:
    """Signed by the key, one origin, never shrinking; consistent where proofs are given."""
    previous: Checkpoint | None = None
    for number, (checkpoint, proof) in enumerate(checkpoints, 1):
        label = f"{what} {number} (size {checkpoint.size})"
        problem = signed_by(checkpoint.note, keys)
        if problem:
            raise Rejected(f"{label} {problem}")
        origin = origin or checkpoint.origin
        if checkpoint.origin != origin:
            raise Rejected(f"{label} is from another log ({checkpoint.origin}, not {origin})")
        if previous is not None:
            if checkpoint.size < previous.size:
                raise Rejected(f"{label} is smaller than the {what} before it (size "
                               f"{previous.size}): the log went backwards")
            if checkpoint.size == previous.size and checkpoint.root != previous.root:
                raise Rejected(f"{label} has another root than the {what} before it of the "
                               "same size: the log was rewritten")
            if proof is not None and not verify_consistency(
                    previous.size, checkpoint.size, previous.root, checkpoint.root, proof):
                raise Rejected(f"{label} is not consistent with the {what} before it (size "
                               f"{previous.size}): the log was rewritten between them")
        previous = checkpoint


def _seq_ranges(text: str) -> list[int]:
    if text == "-":
        return []
    seqs: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        seqs += range(int(low), int(high or low) + 1)
    return seqs


def _manifest(text: Any, keys: Sequence[Key], origin: str) -> tuple[int, bytes, list[int]]:
    if not isinstance(text, str):
        raise Rejected("the manifest is not a note")
    try:
        note = parse_note(text)
    except ValueError as exc:
        raise Rejected(f"the manifest is not a signed note: {exc}") from None
    problem = signed_by(note, keys)
    if problem:
        raise Rejected(f"the manifest {problem}")
    lines = note.text.split("\n")[:-1]
    fields = dict(line.partition(" ")[::2] for line in lines[1:])
    try:
        if lines[0] != EVIDENCE_FORMAT or fields["origin"] != origin:
            raise ValueError
        size, root = fields["tree"].split(" ")
        count, listed = fields["events"].split(" ")
        seqs = _seq_ranges(listed)
        if len(seqs) != int(count):
            raise ValueError
        return int(size), _b64(root), seqs
    except (KeyError, ValueError, IndexError):
        raise Rejected("the manifest is not an Enclave evidence manifest for this log") from None


def check_export(lines: Iterable[str], keys: Sequence[Key]) -> tuple[Report, list[Checkpoint]]:
    report = Report()
    header: dict[str, Any] | None = None
    chain: list[tuple[Checkpoint, list[bytes] | None]] = []
    events: list[dict[str, Any]] = []
    manifest: Any = None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError:
            raise Unreadable(f"line {number} is not JSON") from None
        if not isinstance(item, dict):
            raise Unreadable(f"line {number} is not a JSON object")
        if header is None:
            if item.get("format") != EVIDENCE_FORMAT:
                raise Unreadable("not an Enclave audit evidence export "
                                 f"(its first line is not a {EVIDENCE_FORMAT} header)")
            header = item
        elif "checkpoint" in item:
            where = f"checkpoint {len(chain) + 1}"
            proof = item.get("consistency")
            chain.append((_checkpoint(item["checkpoint"], where),
                          None if proof is None else _hashes(proof, f"{where}'s proof")))
        elif "event" in item:
            events.append(item)
        elif "manifest" in item:
            if manifest is not None:
                raise Rejected("the export holds two manifests")
            manifest = item["manifest"]
    if header is None:
        raise Unreadable("the export is empty")
    if not chain:
        raise Rejected("the export holds no signed checkpoint")
    origin = chain[0][0].origin
    for number, (_, proof) in enumerate(chain[1:], 2):
        if proof is None:
            raise Rejected(f"checkpoint {number} comes without a consistency proof")
    check_chain(chain, keys, origin=origin)
    latest = chain[-1][0]
    if manifest is None:
        raise Rejected("the export has no signed manifest: events may have been removed")
    size, root, listed = _manifest(manifest, keys, origin)
    if (size, root) != (latest.size, latest.root):
        raise Rejected(f"the signed manifest names the tree of size {size}, not the export's "
                       f"latest checkpoint (size {latest.size})")
    seen: set[int] = set()
    signed = set(listed)
    for item in events:
        seq = _check_event(item, latest)
        if seq in seen:
            raise Rejected(f"event {seq} appears twice")
        if seq not in signed:
            raise Rejected(f"event {seq} is not in the signed manifest: it was added")
        seen.add(seq)
    for seq in listed:
        if seq not in seen:
            raise Rejected(f"event {seq} is listed in the signed manifest but missing from "
                           "the export: it was removed")
    report.origin, report.tree_size, report.checkpoint_time = origin, latest.size, latest.time
    report.events, report.checkpoints = len(events), len(chain)
    return report, [c for c, _ in chain]


def _check_event(item: dict[str, Any], latest: Checkpoint) -> int:
    document = item.get("event")
    if not isinstance(document, dict):
        raise Rejected("an event is not a JSON object")
    seq = document.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise Rejected("an event has no sequence number")
    index = seq - 1
    if item.get("leaf_index") != index:
        raise Rejected(f"event {seq} stands at leaf {item.get('leaf_index')}, not {index}")
    leaf = leaf_hash(canonical(document))
    exported = item.get("leaf_hash")
    if not isinstance(exported, str) or not _equal(leaf.hex().encode(), exported.encode()):
        raise Rejected(f"event {seq} was edited: its content does not hash to the leaf it was "
                       "exported with")
    if item.get("tree_size") != latest.size:
        raise Rejected(f"event {seq} is proven against a tree of size {item.get('tree_size')}, "
                       f"not the latest checkpoint's ({latest.size})")
    proof = _hashes(item.get("inclusion"), f"event {seq}'s inclusion proof")
    if not verify_inclusion(leaf, index, latest.size, proof, latest.root):
        raise Rejected(f"event {seq} is not in the signed log: its inclusion proof does not "
                       f"lead to the root of the checkpoint of size {latest.size} (the event "
                       "or its proof was altered)")
    return seq


def extract_notes(text: str) -> list[str]:
    """Checkpoint notes from what a syslog/SIEM collected, or from plain notes one after another.

    A line holding a JSON object with an "enclave_checkpoint" (or "checkpoint") string is one
    note, whatever precedes it on the line (syslog headers). Elsewhere a note is written out
    plainly: its lines, a blank line, its signature lines (a checkpoint has no blank line of
    its own); other lines are skipped."""
    notes: list[str] = []
    run: list[str] = []  # consecutive non-blank lines
    body: list[str] = []  # a run that a blank line ended
    signatures: list[str] = []

    def flush() -> None:
        if body and signatures:
            notes.append("\n".join(body) + "\n\n" + "\n".join(signatures) + "\n")
        body.clear()
        signatures.clear()

    decoder = json.JSONDecoder()
    for line in text.splitlines():
        start = line.find("{")
        found = None
        if start >= 0:
            try:
                found, _ = decoder.raw_decode(line[start:])
            except ValueError:
                pass
        note = found.get("enclave_checkpoint", found.get("checkpoint")) \
            if isinstance(found, dict) else None
        if isinstance(note, str):
            flush()
            run.clear()
            notes.append(note)
        elif line.startswith(SIGNATURE_PREFIX) and body and not run:
            signatures.append(line)
        else:
            if signatures:
                flush()
            if line.strip():
                run.append(line)
            else:
                body[:] = run
                run.clear()
    flush()
    return notes


def check_shipped(notes: Sequence[str], keys: Sequence[Key],
                  exported: Sequence[Checkpoint] | None) -> int:
    """Shipped checkpoints: signed, never shrinking, and (with an export) the export's own."""
    shipped = [(_checkpoint(note, f"shipped checkpoint {n}"), None)
               for n, note in enumerate(notes, 1)]
    if not shipped:
        raise Unreadable("no checkpoint note found in the shipped checkpoints")
    origin = exported[0].origin if exported else None
    check_chain(shipped, keys, what="shipped checkpoint", origin=origin)
    if exported:
        by_size = {c.size: c for c in exported}
        latest = exported[-1]
        for number, (checkpoint, _) in enumerate(shipped, 1):
            label = f"shipped checkpoint {number} (size {checkpoint.size}, {checkpoint.time})"
            if checkpoint.size > latest.size:
                raise Rejected(f"{label} is beyond the export's latest checkpoint (size "
                               f"{latest.size}): the log was truncated after it was shipped")
            mine = by_size.get(checkpoint.size)
            if mine is None:
                raise Rejected(f"{label} is missing from the export's checkpoints: "
                               "checkpoints were removed")
            if mine.root != checkpoint.root:
                raise Rejected(f"{label} has another root than the export's checkpoint of that "
                               "size: the log was rewritten after it was shipped")
    return len(shipped)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="enclave-verify",
        description="Check an Enclave audit evidence export and/or shipped checkpoints against "
                    "the appliance's public key, offline.")
    parser.add_argument("export", nargs="?", help="evidence export (JSON lines) from "
                        "`enclave audit export`")
    parser.add_argument("--key", action="append", required=True, metavar="KEY",
                        help="the appliance's public key (`enclave audit public-key`), or a file "
                             "holding it; repeat for older keys")
    parser.add_argument("--checkpoints", metavar="FILE", help="checkpoints shipped off the "
                        "appliance (syslog/SIEM capture or plain notes)")
    args = parser.parse_args(argv)
    if not args.export and not args.checkpoints:
        parser.error("give an export, --checkpoints, or both")
    try:
        keys = load_keys(args.key)
        report, exported = Report(), None
        if args.export:
            with open(args.export, encoding="utf-8") as handle:
                report, exported = check_export(handle, keys)
        if args.checkpoints:
            report.shipped = check_shipped(
                extract_notes(Path(args.checkpoints).read_text(encoding="utf-8")), keys, exported)
    except Rejected as exc:
        print(f"enclave-verify: REJECTED: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except (Unreadable, OSError, UnicodeDecodeError) as exc:
        print(f"enclave-verify: cannot read the input: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    print(report.summary())
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
