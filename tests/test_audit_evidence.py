"""A log anyone can verify: checkpoints as signed notes, evidence exports checked offline by
`enclave-verify`, and checkpoints shipped to a syslog/SIEM that catch a truncated log.

The attacks are the issue's: an edited event, a removed event, a checkpoint whose size went
backwards, a checkpoint signed by another key, and a tampered inclusion proof. Each must be
rejected with its own message, by the stand-alone verifier that trusts only the public key.
"""

from __future__ import annotations

import ast
import base64
import dataclasses
import io
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from test_audit_log import as_superuser, principal, rechain, row_hash, seed_contacts
from test_layout import imported_top_levels

from schema.context import unit_of_work
from schema.ops import audit_log
from schema.runtime import APPLIANCE_ID_KEY, Appliance, initialise
from security import audit, audit_ship, checkpoint_note, merkle
from security import verify_standalone as v
from security.config import Settings, SyslogTarget
from security.errors import ConfigurationError, EnclaveError, Forbidden
from security.keys import AUDIT_SIGNING
from storage.models import AuditCheckpoint, AuditEvent, Setting

REPO = Path(__file__).resolve().parent.parent
ENCLAVE_VERIFY = REPO / ".venv" / "bin" / "enclave-verify"
ENCLAVE = REPO / ".venv" / "bin" / "enclave"
OFFICER = principal("security_officer", id="officer")


def entry_leaves(appliance: Appliance) -> list[bytes]:
    with appliance.sessions() as session:
        return [audit.entry_leaf(row) for row in session.scalars(
            select(AuditEvent).order_by(AuditEvent.seq))]


def checkpoint_rows(appliance: Appliance) -> list[AuditCheckpoint]:
    with appliance.sessions() as session:
        return list(session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq)))


def verifier_key(appliance: Appliance) -> str:
    with unit_of_work(appliance, OFFICER) as ctx:
        return audit_log.public_keys(ctx)[0].verifier_key


def sign_tail(appliance: Appliance) -> None:
    with appliance.sessions() as session, session.begin():
        audit.checkpoint_now(session, appliance.keyring,
                             checkpoint_every=appliance.settings.audit_checkpoint_every)


def export(appliance: Appliance, **selection: Any) -> list[dict[str, Any]]:
    sign_tail(appliance)
    out = io.StringIO()
    with unit_of_work(appliance, OFFICER) as ctx:
        audit_log.export(ctx, out, filter=audit_log.AuditFilter(**selection))
    return [json.loads(line) for line in out.getvalue().splitlines()]


def write_lines(path: Path, items: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def run_verifier(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The verifier in-process (fast); the console script is run as a process below."""
    capsys.readouterr()
    code = v.main(list(args))
    captured = capsys.readouterr()
    return code, (captured.out + captured.err).strip()


def verified(appliance: Appliance) -> audit.VerifyReport:
    with appliance.sessions() as session:
        return audit.verify(session, appliance.keyring)


def app_signing_key(appliance: Appliance) -> Ed25519PrivateKey:
    return appliance.keyring.signing_key(AUDIT_SIGNING)


# -- checkpoints are signed notes ----------------------------------------------------------------

def test_checkpoints_are_signed_notes_over_the_merkle_tree(appliance: Appliance) -> None:
    seed_contacts(appliance, 12)
    leaves = entry_leaves(appliance)
    rows = checkpoint_rows(appliance)
    assert len(rows) >= 2
    with appliance.sessions() as session:
        appliance_id = session.scalar(select(Setting.value).where(
            Setting.key == APPLIANCE_ID_KEY))
    assert checkpoint_note.APPLIANCE_ID_SETTING == APPLIANCE_ID_KEY
    origin = f"enclave/{appliance_id}/audit"
    key = v.parse_key(verifier_key(appliance))
    assert key.name == origin
    previous: v.Checkpoint | None = None
    for row in rows:
        assert len(row.signature) <= 200  # the column, without a migration
        note = checkpoint_note.row_note(row)
        lines = note.split("\n")
        assert lines[:3] == [origin, str(row.seq),
                             base64.b64encode(merkle.root(leaves[:row.seq])).decode()]
        assert lines[3] == f"time {row.ts}" and lines[4] == f"next {row.next_due}"
        assert lines[5] == "" and lines[6].startswith(f"\u2014 {origin} ") and lines[7] == ""
        parsed = v.parse_checkpoint(note)
        assert (parsed.origin, parsed.size, parsed.root.hex()) == (origin, row.seq, row.hash)
        assert v.signed_by(parsed.note, [key]) is None
        if previous is not None:  # consecutive checkpoints are consistent
            proof = merkle.consistency_proof(leaves, previous.size, parsed.size)
            assert v.verify_consistency(previous.size, parsed.size, previous.root, parsed.root,
                                        proof)
        previous = parsed
    report = verified(appliance)
    assert report.ok and report.tree_size == len(leaves)
    assert report.root == merkle.root(leaves).hex()


def test_notes_follow_the_signed_note_spec_byte_for_byte() -> None:
    """golang.org/x/mod/sumdb/note's published example: same key ID, verifier key, signature."""
    seed = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    raw = checkpoint_note.raw_public_key(key)
    vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    assert checkpoint_note.verifier_key("PeterNeumann", raw) == vkey
    body = ("If you think cryptography is the answer to your problem,\n"
            "then you don't know what your problem is.\n")
    line = checkpoint_note.sign(body, "PeterNeumann", key)
    assert line == ("\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
                    "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=")
    note = v.parse_note(checkpoint_note.note(body, line))
    assert v.signed_by(note, [v.parse_key(vkey)]) is None
    assert v.signed_by(note, [v.parse_key(base64.b64encode(raw).decode())]) is None
    assert "bad signature" in (v.signed_by(v.parse_note(checkpoint_note.note(
        body.replace("problem is", "problem was"), line)), [v.parse_key(vkey)]) or "")
    other = v.parse_key(checkpoint_note.verifier_key(
        "PeterNeumann", checkpoint_note.raw_public_key(Ed25519PrivateKey.generate())))
    assert "not signed by the given key" in (v.signed_by(note, [other]) or "")
    for bad in ("", "x+y", "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                base64.b64encode(b"short").decode()):
        with pytest.raises(v.Unreadable):
            v.parse_key(bad)


# -- evidence: an honest export verifies, each forgery is caught --------------------------------

def test_honest_export_verifies_and_every_forgery_is_rejected(
        appliance: Appliance, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    contacts = seed_contacts(appliance, 14)
    items = export(appliance, object_id=contacts[3])
    header, *body = items
    checkpoints = [i for i in body if "checkpoint" in i]
    events = [i for i in body if "event" in i]
    (manifest,) = [i for i in body if "manifest" in i]
    assert header["format"] == v.EVIDENCE_FORMAT and header["events"] == len(events) == 1
    assert len(checkpoints) == len(checkpoint_rows(appliance)) >= 3
    assert checkpoints[0]["consistency"] is None
    assert all(c["consistency"] for c in checkpoints[1:])
    assert events[0]["event"]["object_ids"] == [contacts[3]]
    assert manifest["manifest"].startswith(v.EVIDENCE_FORMAT + "\n")
    key = verifier_key(appliance)
    assert header["key"]["verifier_key"] == key

    # A wider selection, several events spread over the log.
    wide = export(appliance, action="contact.create")
    wide_events = [i for i in wide if "event" in i]
    assert len(wide_events) == 14
    honest = write_lines(tmp_path / "honest.jsonl", wide)
    code, said = run_verifier(capsys, str(honest), "--key", key)
    assert code == 0, said
    assert said.startswith("OK: 14 events proven in enclave/") and "consistent" in said

    def variant(name: str, change: Callable[[list[dict[str, Any]]], list[dict[str, Any]]],
                *, key_: str = key) -> str:
        items_ = change(json.loads(json.dumps(wide)))
        code_, said_ = run_verifier(capsys, str(write_lines(tmp_path / f"{name}.jsonl", items_)),
                                    "--key", key_)
        assert code_ == 1, (name, said_)
        assert said_.startswith("enclave-verify: REJECTED: ") and "\n" not in said_, said_
        return said_

    def event_lines(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items_ if "event" in i]

    def edited(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        event_lines(items_)[4]["event"]["actor"] = "client:someone-else"
        return items_

    def edited_with_leaf(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        item = event_lines(edited(items_))[4]
        item["leaf_hash"] = v.leaf_hash(v.canonical(item["event"])).hex()
        return items_

    def removed(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        items_.remove(event_lines(items_)[6])
        return items_

    def added_twice(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*items_, event_lines(items_)[2]]

    def tampered_proof(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        proof = event_lines(items_)[5]["inclusion"]
        proof[1] = base64.b64encode(bytes(32)).decode()
        return items_

    def without_manifest(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [i for i in items_ if "manifest" not in i]

    def backwards(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # A genuine, properly signed older checkpoint after the newest one: the log shrank.
        older = [i for i in items_ if "checkpoint" in i][1]
        where = max(n for n, i in enumerate(items_) if "checkpoint" in i)
        return [*items_[:where + 1], dict(older), *items_[where + 1:]]

    def other_key(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Re-sign one checkpoint with the attacker's key under the log's name.
        item = [i for i in items_ if "checkpoint" in i][2]
        note = v.parse_note(item["checkpoint"])
        name = note.signatures[0][0]
        item["checkpoint"] = checkpoint_note.note(
            note.text, checkpoint_note.sign(note.text, name, Ed25519PrivateKey.generate()))
        return items_

    def rewritten_and_resigned(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Even the appliance's own key cannot vouch for a log that forked: a checkpoint with
        # another root is not consistent with the one before it.
        item = [i for i in items_ if "checkpoint" in i][2]
        parsed = v.parse_checkpoint(item["checkpoint"])
        name = parsed.note.signatures[0][0]
        body = checkpoint_note.body(name, parsed.size, bytes(32), parsed.time,
                                    int(parsed.extensions["next"]))
        item["checkpoint"] = checkpoint_note.note(
            body, checkpoint_note.sign(body, name, app_signing_key(appliance)))
        return items_

    def attacker_everything(items_: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Everything re-signed by an attacker who also swaps the key inside the export: the
        # verifier trusts only the key it was given.
        attacker = Ed25519PrivateKey.generate()
        for item in items_:
            for field_ in ("checkpoint", "manifest"):
                if field_ in item:
                    note = v.parse_note(item[field_])
                    item[field_] = checkpoint_note.note(note.text, checkpoint_note.sign(
                        note.text, note.signatures[0][0], attacker))
        items_[0]["key"]["verifier_key"] = checkpoint_note.verifier_key(
            items_[0]["origin"], checkpoint_note.raw_public_key(attacker))
        return items_

    messages = {
        "edited": variant("edited", edited),
        "edited_with_leaf": variant("edited_with_leaf", edited_with_leaf),
        "removed": variant("removed", removed),
        "added_twice": variant("added_twice", added_twice),
        "tampered_proof": variant("tampered_proof", tampered_proof),
        "without_manifest": variant("without_manifest", without_manifest),
        "backwards": variant("backwards", backwards),
        "other_key": variant("other_key", other_key),
        "rewritten_and_resigned": variant("rewritten_and_resigned", rewritten_and_resigned),
        "attacker_everything": variant("attacker_everything", attacker_everything),
        "foreign_key": variant("foreign_key", lambda i: i, key_=checkpoint_note.verifier_key(
            key.split("+")[0], checkpoint_note.raw_public_key(Ed25519PrivateKey.generate()))),
    }
    seqs = [i["event"]["seq"] for i in wide_events]
    assert f"event {seqs[4]} was edited" in messages["edited"]
    assert f"event {seqs[4]} is not in the signed log" in messages["edited_with_leaf"]
    assert f"event {seqs[6]} is listed in the signed manifest but missing" in messages["removed"]
    assert "it was removed" in messages["removed"]
    assert f"event {seqs[2]} appears twice" in messages["added_twice"]
    assert f"event {seqs[5]} is not in the signed log: its inclusion proof" in \
        messages["tampered_proof"]
    assert "no signed manifest" in messages["without_manifest"]
    assert "went backwards" in messages["backwards"]
    assert "checkpoint 3" in messages["other_key"] \
        and "not signed by the given key" in messages["other_key"]
    assert "not consistent with the checkpoint before it" in messages["rewritten_and_resigned"]
    assert "checkpoint 1" in messages["attacker_everything"] \
        and "not signed by the given key" in messages["attacker_everything"]
    assert "not signed by the given key" in messages["foreign_key"]
    assert len(set(messages.values())) == len(messages)  # each its own message

    # The real console script, as a process: accepts the honest file, rejects an edited one.
    done = subprocess.run([str(ENCLAVE_VERIFY), str(honest), "--key", key],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("OK: 14 events"), done
    done = subprocess.run([str(ENCLAVE_VERIFY), str(tmp_path / "edited.jsonl"), "--key", key],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == "", done
    assert done.stderr.strip() == messages["edited"]


def test_entries_with_any_text_verify(appliance: Appliance, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The verifier re-encodes each entry exactly as the appliance hashed it."""
    odd = ["Zo\u00eb \u2014 \u4e2d\u6587 \U0001f600", "line\u2028separator", 'quote " \\ back',
           "\x1f\x7f control", ""]
    with appliance.sessions() as session, session.begin():
        audit.append(session, [audit.AuditEntry(
            actor="client:odd", roles=[text_, "r"], action="contact.read", object_type="contact",
            object_ids=[text_], fields=[text_], reason=text_ or None, request_id=text_[:60])
            for text_ in odd], keyring=appliance.keyring,
            checkpoint_every=appliance.settings.audit_checkpoint_every)
    items = export(appliance, actor="client:odd")
    assert [i["event"]["object_ids"] for i in items if "event" in i] == [[t] for t in odd]
    path = write_lines(tmp_path / "odd.jsonl", items)
    assert path.read_bytes().isascii()
    code, said = run_verifier(capsys, str(path), "--key", verifier_key(appliance))
    assert code == 0 and said.startswith("OK: 5 events"), said


def test_export_needs_the_audit_permission_is_audited_and_refuses_a_broken_log(
        appliance: Appliance) -> None:
    seed_contacts(appliance, 10)
    with unit_of_work(appliance, principal("sales_manager", team="east")) as ctx, \
            pytest.raises(Forbidden):
        audit_log.export(ctx, io.StringIO())
    with unit_of_work(appliance, principal("sales_manager", team="east")) as ctx, \
            pytest.raises(Forbidden):
        audit_log.compare_shipped(ctx, "")

    items = export(appliance, action="contact.create", actor="client:nobody")
    assert items[0]["events"] == 0 and items[0]["filters"] == {
        "action": "contact.create", "actor": "client:nobody"}
    assert "events 0 -\n" in items[-1]["manifest"]
    with appliance.sessions() as session:
        last = session.scalars(select(AuditEvent).order_by(AuditEvent.seq.desc())).first()
    assert last is not None and last.action == "audit.export" and last.actor == "operator:officer"
    assert set(json.loads(last.fields)) >= {"action=contact.create", "actor=client:nobody",
                                            "events=0"}

    # Entries appended after the latest checkpoint are counted, not proven.
    seed_contacts(appliance, 1, prefix="Late")
    with unit_of_work(appliance, OFFICER) as ctx:
        summary = audit_log.export(ctx, io.StringIO(), filter=audit_log.AuditFilter(
            action="contact.create"))
    assert summary.events == 10 and summary.unsigned == 1

    # A log that no longer matches its own checkpoints proves nothing: the export refuses.
    rows = checkpoint_rows(appliance)
    m = rows[1].seq - 2
    with as_superuser(appliance, "replica") as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'x' WHERE seq = :m"), {"m": m})
        rechain(conn, m)
    with unit_of_work(appliance, OFFICER) as ctx, \
            pytest.raises(EnclaveError, match="does not match its signed checkpoints"):
        audit_log.export(ctx, io.StringIO())


def test_the_verifier_is_one_file_of_standard_library_and_cryptography(
        appliance: Appliance, tmp_path: Path) -> None:
    source = (REPO / "security" / "verify_standalone.py").read_text()
    allowed = set(sys.stdlib_module_names) | {"cryptography", "__future__"}
    assert imported_top_levels(source) <= allowed, imported_top_levels(source) - allowed
    assert not [node for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and node.level]  # no relative imports

    # Copied alone to another folder and run with an isolated interpreter, it still works.
    seed_contacts(appliance, 3)
    evidence = write_lines(tmp_path / "evidence.jsonl", export(appliance))
    key_file = tmp_path / "appliance.pub"
    key_file.write_text("# the appliance's audit key\n" + verifier_key(appliance) + "\n")
    alone = tmp_path / "offline" / "verify.py"
    alone.parent.mkdir()
    shutil.copy(REPO / "security" / "verify_standalone.py", alone)
    done = subprocess.run([sys.executable, "-I", str(alone), str(evidence), "--key",
                           str(key_file)], cwd=alone.parent, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.startswith("OK: "), done
    done = subprocess.run([sys.executable, "-I", str(alone), str(tmp_path / "none.jsonl"),
                           "--key", str(key_file)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2 and "cannot read" in done.stderr, done


def test_checkpoints_signed_before_notes_still_verify(appliance: Appliance) -> None:
    """An appliance upgraded with a log whose checkpoints signed the chain hash."""
    seed_contacts(appliance, 9)
    key = app_signing_key(appliance)
    rows = checkpoint_rows(appliance)
    with as_superuser(appliance, "replica") as conn:
        for row in rows:
            chain = row_hash(conn, row.seq)
            signature = key.sign(audit._legacy_message(row.seq, chain, row.ts, row.next_due))
            conn.execute(text("UPDATE audit_checkpoints SET hash = :h, signature = :s "
                              "WHERE seq = :q"),
                         {"h": chain, "s": base64.b64encode(signature).decode(), "q": row.seq})
        conn.execute(text("DELETE FROM settings WHERE key = :k"), {"k": audit.TREE_SETTING})
    report = verified(appliance)
    assert report.ok and report.checkpoints == len(rows), report
    # A legacy checkpoint is still checked: a rewritten chain no longer matches it.
    with as_superuser(appliance, "replica") as conn:
        conn.execute(text("UPDATE audit_checkpoints SET hash = :h WHERE seq = :q"),
                     {"h": "0" * 64, "q": rows[1].seq})
    report = verified(appliance)
    assert not report.ok and "bad signature" in (report.problem or "")
    with as_superuser(appliance, "replica") as conn:
        conn.execute(text("UPDATE audit_checkpoints SET hash = :h WHERE seq = :q"),
                     {"h": row_hash(conn, rows[1].seq), "q": rows[1].seq})
    # New checkpoints are notes again; the tree is rebuilt from the entries once.
    seed_contacts(appliance, 9, prefix="After")
    assert checkpoint_note.signature_name(checkpoint_rows(appliance)[-1].signature)
    report = verified(appliance)
    assert report.ok, report
    items = export(appliance, action="contact.create")
    assert len([i for i in items if "event" in i]) == 18


def test_a_stored_tree_that_does_not_match_is_rebuilt(
        appliance: Appliance, caplog: pytest.LogCaptureFixture) -> None:
    seed_contacts(appliance, 5)
    with appliance.sessions() as session, session.begin():
        session.execute(text("UPDATE settings SET value = :v WHERE key = :k"),
                        {"k": audit.TREE_SETTING, "v": json.dumps(
                            {"size": 1, "hashes": [bytes(32).hex()]})})
    with caplog.at_level(logging.WARNING, logger="enclave.audit"):
        seed_contacts(appliance, 9, prefix="More")
    assert "rebuilding" in caplog.text
    assert verified(appliance).ok


# -- shipping to a syslog/SIEM, and what it catches ----------------------------------------------

class Listener:
    """A real syslog collector on 127.0.0.1: UDP datagrams or RFC 6587 octet-counted TCP."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.messages: list[str] = []
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        if transport == "tcp":
            self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def target(self) -> SyslogTarget:
        return SyslogTarget(self.transport, "127.0.0.1", self.port)

    def _run(self) -> None:
        while not self._stop:
            try:
                if self.transport == "udp":
                    self.messages.append(self.sock.recv(65535).decode())
                    continue
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                data = b""
                conn.settimeout(2)
                while chunk := conn.recv(65535):
                    data += chunk
                while data:  # "LEN SP MSG"
                    length, _, rest = data.partition(b" ")
                    self.messages.append(rest[:int(length)].decode())
                    data = rest[int(length):]

    def wait_for(self, count: int, timeout: float = 10) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.messages)

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@contextmanager
def shipping_appliance(settings: Settings, listener: Listener) -> Iterator[Appliance]:
    shipping = dataclasses.replace(settings, audit_syslog=listener.target)
    initialise(shipping)
    opened = Appliance.open(shipping)
    try:
        yield opened
    finally:
        opened.close()


def test_checkpoints_ship_over_udp_and_a_truncated_or_rewritten_log_is_caught(
        settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    listener = Listener("udp")
    try:
        with shipping_appliance(settings, listener) as appliance:
            seed_contacts(appliance, 30)
            key = verifier_key(appliance)
            honest = write_lines(tmp_path / "before.jsonl", export(appliance))
            rows = checkpoint_rows(appliance)
            received = listener.wait_for(len(rows))
            assert len(received) == len(rows) >= 5, (len(received), len(rows))
            _check_shipped_messages(received, appliance)
            siem = tmp_path / "siem.log"  # what a SIEM stores: one message a line
            siem.write_text("".join(f"Jun  2 09:14:03 collector {m}\n" for m in received))
            with unit_of_work(appliance, OFFICER) as ctx:
                report = audit_log.compare_shipped(ctx, siem.read_text())
            assert report.ok and report.checked == len(received), report
            code, said = run_verifier(capsys, str(honest), "--key", key,
                                      "--checkpoints", str(siem))
            assert code == 0 and f"{len(received)} shipped checkpoints match" in said, said

            # An attacker with the database cuts the log short, checkpoints and head included.
            original = _dump_audit(appliance)
            cut = rows[-3].seq - 3
            with as_superuser(appliance, "replica") as conn:
                conn.execute(text("DELETE FROM audit_events WHERE seq > :c"), {"c": cut})
                conn.execute(text("DELETE FROM audit_checkpoints WHERE seq > :c"), {"c": cut})
                conn.execute(text("UPDATE audit_head SET seq = :c, hash = :h, checkpoint_due = "
                                  ":d WHERE id = 1"),
                             {"c": cut, "h": row_hash(conn, cut), "d": cut + 8})
            with unit_of_work(appliance, OFFICER) as ctx:
                report = audit_log.compare_shipped(ctx, siem.read_text())
            assert not report.ok and report.verdict == "truncated", report
            assert f"the log ends at entry {cut}" in (report.problem or "")
            # The truncated log, exported and checked offline against what was shipped.
            truncated = write_lines(tmp_path / "after.jsonl", export(appliance))
            code, said = run_verifier(capsys, str(truncated), "--key", key,
                                      "--checkpoints", str(siem))
            assert code == 1 and "the log was truncated after it was shipped" in said, said
            # ...and the checkpoint the appliance signed for that export, shipped after the
            # others, is smaller than they are.
            later = listener.wait_for(len(received) + 1)
            assert len(later) == len(received) + 1
            siem.write_text("".join(f"{m}\n" for m in later))
            code, said = run_verifier(capsys, "--checkpoints", str(siem), "--key", key)
            assert code == 1 and "went backwards" in said, said

            # Rewritten instead: same length, another history.
            _restore_audit(appliance, original)
            siem.write_text("".join(f"{m}\n" for m in received))
            m = rows[1].seq + 2
            with as_superuser(appliance, "disable") as conn:
                conn.execute(text("UPDATE audit_events SET actor = 'x' WHERE seq = :m"),
                             {"m": m})
                rechain(conn, m)
            with unit_of_work(appliance, OFFICER) as ctx:
                report = audit_log.compare_shipped(ctx, siem.read_text())
            assert not report.ok and report.verdict == "rewritten", report
            assert f"entries 1-{rows[2].seq} differ" in (report.problem or ""), report
    finally:
        listener.close()


def _check_shipped_messages(received: list[str], appliance: Appliance) -> None:
    key = v.parse_key(verifier_key(appliance))
    sizes = []
    for message in received:
        header, _, msg = message.partition(" - ")
        pri_version, stamp, host, app, procid, msgid = header.split(" ")
        # facility 13 (log audit) * 8 + severity 5 (notice), RFC 5424 version 1
        assert (pri_version, app, msgid) == ("<109>1", "enclave", "audit-checkpoint"), header
        assert stamp.endswith("Z") and procid.isdigit() and host
        assert message.isascii()
        note = json.loads(msg)["enclave_checkpoint"]
        parsed = v.parse_checkpoint(note)
        assert v.signed_by(parsed.note, [key]) is None
        sizes.append(parsed.size)
    assert sizes == sorted(sizes)


def _dump_audit(appliance: Appliance) -> dict[str, list[dict[str, Any]]]:
    with appliance.engine.connect() as conn:
        return {t: [dict(r) for r in conn.execute(text(f"SELECT * FROM {t}")).mappings()]
                for t in ("audit_events", "audit_checkpoints", "audit_head")}


def _restore_audit(appliance: Appliance, saved: dict[str, list[dict[str, Any]]]) -> None:
    with as_superuser(appliance, "replica") as conn:
        for table, rows in saved.items():
            conn.execute(text(f"DELETE FROM {table}"))
            columns = list(rows[0])
            conn.execute(text(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                              f"({', '.join(':' + c for c in columns)})"), rows)


def test_tcp_shipping_is_best_effort_and_catches_up(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    listener = Listener("tcp")
    closed_port = Listener("tcp")
    closed_port.close()  # nothing listens there any more
    try:
        down = dataclasses.replace(settings, audit_syslog=closed_port.target)
        initialise(down)
        appliance = Appliance.open(down)
        try:
            with caplog.at_level(logging.WARNING, logger="enclave.audit.ship"):
                started = time.monotonic()
                seed_contacts(appliance, 10)  # requests go on while the collector is down
                assert time.monotonic() - started < 30
                assert appliance.shipper is not None
                appliance.shipper.close()
            assert "could not ship audit checkpoints" in caplog.text
            assert appliance.shipper.last_error
            written = len(checkpoint_rows(appliance))
        finally:
            appliance.close()
        with shipping_appliance(settings, listener) as appliance:
            seed_contacts(appliance, 8, prefix="Up")  # the next checkpoint sends the backlog
            total = len(checkpoint_rows(appliance))
            listener.wait_for(total)
            assert appliance.shipper is not None
            appliance.shipper.close()  # let the thread finish recording what it sent
            received = list(listener.messages)
            assert total > written and len(received) == total, (written, total, len(received))
            _check_shipped_messages(received, appliance)
            assert audit_ship.ship_pending(appliance.sessions, listener.target) == 0
    finally:
        listener.close()


def test_syslog_destination_is_validated() -> None:
    assert str(SyslogTarget.parse("udp://127.0.0.1:5514")) == "udp://127.0.0.1:5514"
    assert SyslogTarget.parse("tcp://[::1]:6514").host == "::1"
    settings = Settings.from_env({"ENCLAVE_AUDIT_SYSLOG": "tcp://siem.example:6514"},
                                 data_dir=Path("/nonexistent"))
    assert settings.audit_syslog == SyslogTarget("tcp", "siem.example", 6514)
    for bad in ("udp://127.0.0.1", "http://siem:514", "tcp://:514", "udp://h:99999",
                "udp://h:514/path", "siem:514"):
        with pytest.raises(ConfigurationError):
            SyslogTarget.parse(bad)


def test_notes_are_found_in_what_a_siem_keeps() -> None:
    key = Ed25519PrivateKey.generate()
    notes = [checkpoint_note.note(body, checkpoint_note.sign(body, "enclave/x/audit", key))
             for body in (checkpoint_note.body("enclave/x/audit", n, bytes(32), "t", n + 8)
                          for n in (3, 11))]
    as_syslog = [audit_ship.syslog_message(n, hostname="h").decode() for n in notes]
    mixed = (f"garbage line\n{as_syslog[0]}\n{{\"not\": \"a note\"}}\n\n"
             f"{notes[1]}\n")
    assert v.extract_notes(mixed) == notes
    assert v.extract_notes("".join(notes)) == notes


# -- the command line ---------------------------------------------------------------------------

def test_cli_public_key_export_compare_shipped(tmp_path: Path) -> None:
    data = tmp_path / "var"
    env = {k: val for k, val in os.environ.items() if not k.startswith("ENCLAVE_")}
    env.update({"ENCLAVE_DATA_DIR": str(data), "NO_COLOR": "1", "COLUMNS": "200"})

    def enclave(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ENCLAVE), *args], env=env, cwd=tmp_path, capture_output=True,
                              text=True, timeout=60, check=False)

    assert enclave("init", "--dev").returncode == 0
    assert enclave("demo", "--contacts", "3").returncode == 0
    key = enclave("audit", "public-key")
    assert key.returncode == 0 and key.stdout.count("\n") == 1, key
    key_file = tmp_path / "appliance.pub"
    key_file.write_text(key.stdout)
    out = tmp_path / "evidence.jsonl"
    done = enclave("audit", "export", "--action", "contact.create", "--out", str(out))
    assert done.returncode == 0, done
    # The demo's three contacts, and one more per lead it converts.
    with sqlite3.connect(data / "enclave.db") as connection:
        created = connection.execute(
            "SELECT count(*) FROM audit_events WHERE action = 'contact.create'").fetchone()[0]
    assert created >= 3
    assert f"exported {created} events" in done.stdout and "enclave-verify" in done.stdout
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    checked = subprocess.run([str(ENCLAVE_VERIFY), str(out), "--key", str(key_file)],
                             capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0 and checked.stdout.startswith(f"OK: {created} events"), \
        checked

    notes = tmp_path / "shipped.txt"  # checkpoints kept off the box as plain notes
    notes.write_text("".join(json.loads(line)["checkpoint"] for line in out.read_text()
                             .splitlines() if "checkpoint" in json.loads(line)))
    done = enclave("audit", "compare-shipped", str(notes), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True, done
    bad_time = enclave("audit", "export", "--since", "yesterday", "--out", str(out))
    assert bad_time.returncode == 1 and "--since must be an ISO 8601" in bad_time.stderr
    verified = enclave("audit", "verify", "--json")
    assert json.loads(verified.stdout)["tree_size"] >= 5
