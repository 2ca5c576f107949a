"""`enclave backup list` and `prune`: which backups a folder holds, and which to keep.

Prune keeps, like restic and borg, the newest backup of each of the last N days, ISO weeks and
months that have one (a backup kept by any rule stays), and never the newest backup of all.
It removes only complete backups whose manifest it can read; `.partial` files (a backup in
progress, or one that was interrupted) and unreadable files are listed, never removed. A backup
counts towards a rule only once its payload matches the hash its manifest records (checked
when prune would keep it): a damaged newest backup must not be the reason the last good one of
its day is removed. Damaged backups are listed and left in place too.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path

from backup.archive import payload_sha256, read_layout
from backup.errors import BackupError
from backup.manifest import FORMAT

_NAME = re.compile(r"^enclave-backup-(?P<appliance>[0-9a-f-]+)-(?P<stamp>\d{8}T\d{6}(?:\.\d{3})?)Z"
                   r"\.tar(?P<partial>\.partial)?$")


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    created: dt.datetime
    size: int
    appliance_id: str
    status: str                 # "complete", "incomplete" (.partial), "unreadable: why"
    rows: int | None = None
    signer: str | None = None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "name": self.path.name,
                "created_at": self.created.isoformat(), "size": self.size,
                "appliance_id": self.appliance_id, "status": self.status, "rows": self.rows,
                "signer": self.signer}


def _stamp(text: str) -> dt.datetime:
    pattern = "%Y%m%dT%H%M%S.%f" if "." in text else "%Y%m%dT%H%M%S"
    return dt.datetime.strptime(text, pattern).replace(tzinfo=dt.UTC)


def _describe(path: Path) -> BackupInfo | None:
    match = _NAME.match(path.name)
    if match is None:
        return None
    created, size = _stamp(match["stamp"]), path.stat().st_size
    if match["partial"]:
        return BackupInfo(path, created, size, match["appliance"], "incomplete")
    try:
        layout = read_layout(path)
        document = json.loads(layout.manifest)
        if document.get("format") != FORMAT:
            raise ValueError("not an Enclave manifest")
        return BackupInfo(path, dt.datetime.fromisoformat(document["created_at"]), size,
                          str(document["appliance_id"]), "complete",
                          sum(int(t["rows"]) for t in document["tables"]),
                          str(document["signer"]["fingerprint"]))
    except BackupError as exc:
        return BackupInfo(path, created, size, match["appliance"], f"unreadable: {exc.message}")
    except (ValueError, KeyError, TypeError):
        return BackupInfo(path, created, size, match["appliance"],
                          "unreadable: the manifest is malformed")


def list_backups(directory: Path) -> list[BackupInfo]:
    """Backups in `directory`, newest first (signatures are not checked: use verify)."""
    if not directory.is_dir():
        return []
    found = [info for path in directory.iterdir() if path.is_file()
             if (info := _describe(path)) is not None]
    return sorted(found, key=lambda i: (i.created, i.path.name), reverse=True)


@dataclass
class PrunePlan:
    keep: dict[Path, list[str]] = field(default_factory=dict)   # path -> why
    remove: list[BackupInfo] = field(default_factory=list)
    untouched: list[BackupInfo] = field(default_factory=list)   # incomplete or unreadable


def _bucket_rules(daily: int, weekly: int, monthly: int) \
        -> list[tuple[str, int, Callable[[dt.datetime], Hashable]]]:
    return [
        ("daily", daily, lambda t: t.date()),
        ("weekly", weekly, lambda t: t.isocalendar()[:2]),
        ("monthly", monthly, lambda t: (t.year, t.month)),
    ]


def payload_problem(backup: BackupInfo) -> str | None:
    """Why the backup's payload does not match its manifest's SHA-256, or None when it does
    (the signature is `backup verify`'s to check)."""
    try:
        layout = read_layout(backup.path)
        expected = json.loads(layout.manifest)["payload"]["sha256"]
    except BackupError as exc:
        return exc.message
    except (ValueError, KeyError, TypeError):
        return "the manifest is malformed"
    if payload_sha256(layout) != expected:
        return "payload.age does not match the manifest's SHA-256"
    return None


def plan_prune(backups: list[BackupInfo], *, keep_daily: int = 0, keep_weekly: int = 0,
               keep_monthly: int = 0,
               damaged: Callable[[BackupInfo], str | None] = lambda _: None) -> PrunePlan:
    """`damaged` says what is wrong with a backup prune would keep (None: nothing); a damaged
    one is left in place and the next one takes its turn."""
    if min(keep_daily, keep_weekly, keep_monthly) < 0:
        raise BackupError("--keep-daily, --keep-weekly and --keep-monthly cannot be negative")
    if keep_daily + keep_weekly + keep_monthly == 0:
        raise BackupError("give at least one of --keep-daily, --keep-weekly, --keep-monthly")
    plan = PrunePlan()
    complete = sorted((b for b in backups if b.complete),
                      key=lambda b: (b.created, b.path.name), reverse=True)
    plan.untouched = [b for b in backups if not b.complete]
    sound: dict[Path, bool] = {}

    def is_sound(backup: BackupInfo) -> bool:
        if backup.path not in sound:
            problem = damaged(backup)
            sound[backup.path] = problem is None
            if problem is not None:
                plan.untouched.append(replace(backup, status=f"damaged: {problem}"))
        return sound[backup.path]

    newest = next((b for b in complete if is_sound(b)), None)
    if newest is not None:
        plan.keep[newest.path] = ["newest"]
    for rule, count, bucket_of in _bucket_rules(keep_daily, keep_weekly, keep_monthly):
        seen: set[Hashable] = set()
        for backup in complete:
            if len(seen) >= count:
                break
            bucket = bucket_of(backup.created.astimezone(dt.UTC))
            if bucket not in seen and is_sound(backup):
                seen.add(bucket)
                plan.keep.setdefault(backup.path, []).append(rule)
    plan.remove = [b for b in complete if b.path not in plan.keep and sound.get(b.path, True)]
    return plan


def apply_prune(plan: PrunePlan) -> list[Path]:
    removed = []
    for backup in plan.remove:
        backup.path.unlink()
        removed.append(backup.path)
    return removed
