"""Ship signed audit checkpoints off the appliance, and compare the log with what was shipped.

Every checkpoint note is sent as one RFC 5424 syslog message (facility 13 "log audit", severity
notice, MSGID `audit-checkpoint`) to `ENCLAVE_AUDIT_SYSLOG`, over UDP or TCP (RFC 6587
octet-counted framing). Its MSG is one line of JSON, `{"enclave_checkpoint": "<note>"}`, so a
SIEM keeps it intact and `enclave-verify --checkpoints` / `enclave audit compare-shipped` read it
back from any export of the SIEM. Shipping is best effort and never holds up a request: a
background thread sends, after the transaction that signed the checkpoint commits, every
checkpoint newer than the last one shipped (settings row `audit_shipped`); one that fails is
logged and sent again with the next checkpoint.

An attacker with the database can cut the log short and rewrite its tail, but cannot take back
what the SIEM already holds: `compare_shipped` reports a log shorter than a shipped checkpoint
(truncated) or with another root at a shipped size (rewritten).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, event, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from security import audit, checkpoint_note, verify_standalone
from security.config import SyslogTarget
from security.keys import AUDIT_SIGNING, KeyRing
from security.merkle import Frontier
from storage.models import AuditCheckpoint, AuditEvent, Setting

SHIPPED_SETTING = "audit_shipped"
FACILITY_LOG_AUDIT, SEVERITY_NOTICE = 13, 5
MSGID = "audit-checkpoint"
BATCH = 500

log = logging.getLogger("enclave.audit.ship")


def syslog_message(note: str, *, hostname: str | None = None, when: dt.datetime | None = None,
                   procid: int | None = None) -> bytes:
    """One RFC 5424 message carrying a checkpoint note (ASCII: the note is JSON-escaped)."""
    stamp = (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    host = "".join(c for c in (hostname or socket.gethostname()) if "!" <= c <= "~")[:255]
    msg = json.dumps({"enclave_checkpoint": note})
    return (f"<{FACILITY_LOG_AUDIT * 8 + SEVERITY_NOTICE}>1 "
            f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {host or '-'} enclave "
            f"{procid if procid is not None else os.getpid()} {MSGID} - {msg}").encode("ascii")


def send(target: SyslogTarget, messages: Sequence[bytes], *, timeout: float = 3.0) -> None:
    """Send messages in order; raises OSError when the destination cannot be reached."""
    if not messages:
        return
    if target.transport == "udp":
        family, kind, proto, _, address = socket.getaddrinfo(
            target.host, target.port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            for message in messages:
                sock.send(message)
        return
    with socket.create_connection((target.host, target.port), timeout=timeout) as sock:
        sock.sendall(b"".join(b"%d %s" % (len(m), m) for m in messages))  # RFC 6587 3.4.1


def ship_pending(sessions: sessionmaker[Session], target: SyslogTarget) -> int:
    """Send every checkpoint not yet shipped, in signing order; returns how many were sent.

    "Not yet shipped" is newer than the last one sent by sequence number or by signing time:
    after a log is cut short (or restored), its new, smaller checkpoints are shipped too, and
    the collector sees the size go backwards."""
    sent = 0
    while True:
        with sessions() as session, session.begin():
            last_seq, last_ts = _read_cursor(session)
            rows = list(session.scalars(
                select(AuditCheckpoint)
                .where(or_(AuditCheckpoint.seq > last_seq, AuditCheckpoint.ts > last_ts))
                .order_by(AuditCheckpoint.ts, AuditCheckpoint.seq).limit(BATCH)))
        if not rows:
            return sent
        notes = [checkpoint_note.row_note(row) for row in rows
                 if checkpoint_note.signature_name(row.signature) is not None]
        send(target, [syslog_message(note) for note in notes])
        with sessions() as session, session.begin():
            _write_cursor(session, rows[-1].seq, rows[-1].ts)
        sent += len(notes)


def _read_cursor(session: Session) -> tuple[int, str]:
    value = session.scalar(select(Setting.value).where(Setting.key == SHIPPED_SETTING))
    try:
        cursor = json.loads(value or "{}")
        return int(cursor["seq"]), str(cursor["ts"])
    except (ValueError, KeyError, TypeError):
        return 0, ""


def _write_cursor(session: Session, seq: int, ts: str) -> None:
    value = json.dumps({"seq": seq, "ts": ts})
    changed = cast(CursorResult[Any], session.execute(
        update(Setting).where(Setting.key == SHIPPED_SETTING).values(value=value)))
    if not changed.rowcount:
        session.execute(insert(Setting).values(key=SHIPPED_SETTING, value=value))


class Shipper:
    """Ships checkpoints in a background thread, woken after a transaction that signed one
    commits. Failures are logged and retried at the next wake-up."""

    def __init__(self, target: SyslogTarget, sessions: sessionmaker[Session], *,
                 ship: Callable[[sessionmaker[Session], SyslogTarget], int] = ship_pending) -> None:
        self.target = target
        self._sessions = sessions
        self._ship = ship
        self._wake = threading.Event()
        self._closing = False
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        event.listen(sessions, "after_commit", self._after_commit)

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(audit.CHECKPOINT_SIGNED, False):
            self.notify()

    def notify(self) -> None:
        with self._lock:
            if self._closing:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="enclave-audit-ship",
                                                daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self._ship(self._sessions, self.target)
                self.last_error = None
            except Exception as exc:  # best effort: never let shipping take anything down
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("could not ship audit checkpoints to %s (%s); they are sent again "
                            "with the next checkpoint", self.target, self.last_error)
            if self._closing:
                return

    def close(self, timeout: float = 5.0) -> None:
        """Ship what is pending (within `timeout`) and stop. Safe to call again."""
        if event.contains(self._sessions, "after_commit", self._after_commit):
            event.remove(self._sessions, "after_commit", self._after_commit)
        with self._lock:
            self._closing = True
            thread = self._thread
        if thread is not None:
            self._wake.set()
            thread.join(timeout)


# -- comparing with what was shipped -------------------------------------------------------------

@dataclass
class ShippedReport:
    shipped: int = 0  # notes found
    checked: int = 0  # signed by this appliance, of this log
    log_size: int = 0
    verdict: str = "intact"  # intact | truncated | rewritten
    problem: str | None = None
    ignored: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "verdict": self.verdict, "problem": self.problem,
                "shipped": self.shipped, "checked": self.checked, "log_size": self.log_size,
                "ignored": self.ignored}


def compare_shipped(session: Session, keyring: KeyRing, text: str) -> ShippedReport:
    """Compare the log with checkpoints shipped off the appliance (a SIEM export or notes)."""
    report = ShippedReport()
    origin = checkpoint_note.appliance_origin(session)
    keys = [verify_standalone.Key(checkpoint_note.raw_public_key(
        keyring.signing_key(AUDIT_SIGNING, v)), origin) for v in keyring.versions(AUDIT_SIGNING)]
    wanted: dict[int, verify_standalone.Checkpoint] = {}
    notes = verify_standalone.extract_notes(text)
    report.shipped = len(notes)
    for number, note in enumerate(notes, 1):
        try:
            checkpoint = verify_standalone.parse_checkpoint(note)
        except ValueError as exc:
            report.ignored.append(f"note {number}: not a checkpoint ({exc})")
            continue
        problem = verify_standalone.signed_by(checkpoint.note, keys)
        if problem or checkpoint.origin != origin:
            report.ignored.append(f"note {number} (size {checkpoint.size}): "
                                  f"{problem or 'from another log'}")
            continue
        report.checked += 1
        seen = wanted.setdefault(checkpoint.size, checkpoint)
        if seen.root != checkpoint.root:
            report.verdict = "rewritten"
            report.problem = (f"two checkpoints of size {checkpoint.size} with different roots "
                              "were shipped: the log was forked")
            return report
    tree = Frontier()
    rows = session.execute(select(*audit.CANONICAL_COLUMNS).order_by(AuditEvent.seq)
                           .execution_options(yield_per=1000))
    try:
        for row in rows:
            if row.seq != tree.size + 1:
                return _rewritten(report, tree.size, wanted,
                                  f"entry {tree.size + 1} is missing")
            try:
                tree.append(audit.entry_leaf(row))
            except (ValueError, TypeError):
                return _rewritten(report, tree.size, wanted,
                                  f"entry {row.seq} no longer holds what was appended")
            shipped = wanted.get(tree.size)
            if shipped is not None and shipped.root != tree.root():
                report.log_size = tree.size
                report.verdict = "rewritten"
                report.problem = (f"entries 1-{tree.size} differ from the checkpoint shipped "
                                  f"at {shipped.time}: the log was rewritten")
                return report
    finally:
        rows.close()
    report.log_size = tree.size
    beyond = [c for size, c in sorted(wanted.items()) if size > tree.size]
    if beyond:
        report.verdict = "truncated"
        report.problem = (f"the log ends at entry {tree.size}, but a checkpoint shipped at "
                          f"{beyond[-1].time} covers {beyond[-1].size} entries: the log was "
                          "truncated")
    return report


def _rewritten(report: ShippedReport, size: int,
               wanted: dict[int, verify_standalone.Checkpoint], what: str) -> ShippedReport:
    report.log_size, report.verdict = size, "rewritten"
    covered = any(s > size for s in wanted)
    report.problem = (f"{what}, within what shipped checkpoints cover: the log was rewritten"
                      if covered else f"{what}; run `enclave audit verify`")
    return report
