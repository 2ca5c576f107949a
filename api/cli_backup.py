"""`enclave backup ...`: create, verify, restore, list and prune backups; manage recipients.

Each refusal is one line on stderr with its own exit code (see backup.errors and the README);
`--json` prints a machine-readable result (or `{"ok": false, "error": ...}`) on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from api.cli_files import replaced_when_done
from security.config import Settings
from security.errors import EnclaveError

if TYPE_CHECKING:
    from backup import TrustAnchor

backup_app = typer.Typer(help="Encrypted, signed, verifiable backups.", no_args_is_help=True)
recipients_app = typer.Typer(help="Who can decrypt backups (age recipients).",
                             no_args_is_help=True)
erasures_app = typer.Typer(help="Erasures a restore must replay.", no_args_is_help=True)
backup_app.add_typer(recipients_app, name="recipients")
backup_app.add_typer(erasures_app, name="erasures")

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Signer = Annotated[str | None, typer.Option(
    "--signer", help="Fingerprint of the appliance key that must have signed the backup "
    "(default: this appliance's own keys).", show_default=False)]
Directory = Annotated[Path | None, typer.Option(
    "--dir", help="Backup folder (default $ENCLAVE_BACKUP_DIR or DATA_DIR/backups).",
    show_default=False)]


def _cli() -> ModuleType:
    from api import cli
    return cli


def _backup_dir(settings: Settings, given: Path | None) -> Path:
    if given is not None:
        return given.absolute()
    env = os.environ.get("ENCLAVE_BACKUP_DIR")
    return Path(env).absolute() if env else settings.data_dir / "backups"


def _named_folder_exists(directory: Path | None) -> None:
    """A --dir the user named must be a folder: "no backups" would hide a typo."""
    from backup import BackupError
    if directory is not None and not directory.is_dir():
        raise BackupError(f"--dir {directory} is not a folder")


class _RichProgress:
    """The backup package's Progress, drawn on stderr while the terminal watches."""

    def __init__(self, bytes_: bool) -> None:
        columns: list[Any] = [TextColumn("{task.description}", markup=False), BarColumn()]
        columns += [DownloadColumn()] if bytes_ else [TextColumn("{task.completed:,} rows")]
        self._progress = Progress(*columns, TimeRemainingColumn(), console=_cli().err,
                                  transient=True)
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None) -> None:
        self.finish()
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def advance(self, amount: int) -> None:
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def finish(self) -> None:
        if self._task is not None:
            self._progress.stop()
            self._task = None


def _progress(as_json: bool, *, bytes_: bool) -> Any:
    from backup import NO_PROGRESS
    if as_json or not _cli().err.is_terminal:
        return NO_PROGRESS
    return _RichProgress(bytes_)


@contextmanager
def _json_errors(as_json: bool) -> Iterator[None]:
    """With --json, a refusal is also a JSON object on stdout; the exit code stays the same."""
    try:
        yield
    except EnclaveError as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": getattr(exc, "label", exc.code),
                              "code": exc.code, "exit_code": getattr(exc, "exit_code", 1),
                              "message": exc.message}))
        raise


def _anchor(signer: str | None) -> tuple[TrustAnchor, Any]:
    """The trust anchor: --signer, else this appliance's own keys (the appliance is returned
    so the caller can audit with it)."""
    from backup import BackupError, TrustAnchor, appliance_anchor
    if signer is not None:
        return TrustAnchor.of_fingerprint(signer), None
    settings = _cli()._settings()
    if not settings.kek_path.exists():
        raise BackupError(f"no appliance in {settings.data_dir} to check the signer against: "
                          "give --signer FINGERPRINT")
    appliance = _cli()._open()
    return appliance_anchor(appliance), appliance


def _audit(appliance: Any, principal: Any, action: str, **entry: Any) -> None:
    from schema.context import unit_of_work
    with unit_of_work(appliance, principal) as ctx:
        ctx.audit(action, object_type="backup", **entry)


def _table_rows(manifest: Any) -> dict[str, int]:
    return {t.name: t.rows for t in manifest.tables}


# -- create -----------------------------------------------------------------------------------

@backup_app.command("create")
def create(
    to: Annotated[Path | None, typer.Option("--to", help="Folder to write the backup to "
                                            "(default $ENCLAVE_BACKUP_DIR or DATA_DIR/backups).",
                                            show_default=False)] = None,
    as_json: Json = False,
) -> None:
    """Back up the live database and keys: signed, compressed, encrypted to the recipients."""
    from backup import create_backup
    cli = _cli()
    with _json_errors(as_json):
        appliance = cli._open()
        result = create_backup(appliance, _backup_dir(appliance.settings, to),
                               principal=cli._operator("admin"),
                               progress=_progress(as_json, bytes_=False))
    manifest = result.manifest
    if as_json:
        print(json.dumps({
            "ok": True, "path": str(result.path), "size": result.size,
            "sha256": manifest.payload["sha256"], "created_at": manifest.created_at,
            "appliance_id": manifest.appliance_id, "signer": manifest.signer_fingerprint,
            "schema_revision": manifest.schema_revision, "rows": manifest.total_rows,
            "tables": _table_rows(manifest), "recipients": manifest.recipients,
            "seconds": round(result.seconds, 3)}))
        return
    cli.out.print(f"backup written: {result.path}\n"
                  f"  {result.size:,} bytes, {manifest.total_rows:,} rows in "
                  f"{len(manifest.tables)} tables, {result.seconds:.1f} s\n"
                  f"  encrypted to {len(manifest.recipients)} recipient(s); signed by "
                  f"{manifest.signer_fingerprint}", highlight=False)


# -- verify -----------------------------------------------------------------------------------

@backup_app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
    identity: Annotated[Path | None, typer.Option(
        "--identity", help="age identity file: also decrypt and check every table.",
        show_default=False)] = None,
    signer: Signer = None,
    as_json: Json = False,
) -> None:
    """Check structure, signature and payload hash; with --identity, every table too."""
    from backup import load_identities, verify_backup
    cli = _cli()
    appliance = None
    try:
        with _json_errors(as_json):
            anchor, appliance = _anchor(signer)
            identities = load_identities(identity) if identity is not None else None
            try:
                result = verify_backup(file.absolute(), anchor, identities,
                                       progress=_progress(as_json, bytes_=True))
            except EnclaveError as exc:
                if appliance is not None:
                    _audit(appliance, cli._operator("security_officer"), "backup.verify",
                           object_ids=[file.name], decision="error",
                           reason=f"{getattr(exc, 'label', exc.code)}: {exc.message}"[:500])
                raise
        if appliance is not None:
            _audit(appliance, cli._operator("security_officer"), "backup.verify",
                   object_ids=[file.name],
                   fields=["decrypted" if result.decrypted else "signature-and-payload-hash"])
    finally:
        if appliance is not None:
            appliance.close()
    manifest = result.manifest
    if as_json:
        print(json.dumps({
            "ok": True, "path": str(result.path), "signer": result.signer,
            "decrypted": result.decrypted, "created_at": manifest.created_at,
            "appliance_id": manifest.appliance_id, "schema_revision": manifest.schema_revision,
            "rows": manifest.total_rows, "tables": _table_rows(manifest)}))
        return
    depth = ("decrypted; keys and every table's rows and hash match" if result.decrypted else
             "structure, signature and payload hash match (give --identity to check the "
             "contents)")
    cli.out.print(f"backup OK: {file.name}\n  made {manifest.created_at} by appliance "
                  f"{manifest.appliance_id}, signed by {result.signer}\n  "
                  f"{manifest.total_rows:,} rows in {len(manifest.tables)} tables; {depth}",
                  highlight=False)


# -- restore ----------------------------------------------------------------------------------

def _target_settings(data_dir: Path | None, database_url: str | None, dev: bool) -> Settings:
    cli = _cli()
    base = Settings.from_env(data_dir=data_dir or cli._State.data_dir, database_url=database_url)
    if dev or (base.data_dir / cli.DEV_MARKER).exists():
        base = Settings.from_env(data_dir=base.data_dir, database_url=database_url,
                                 dev_mode=True)
    return base


@backup_app.command("restore")
def restore(
    file: Annotated[Path, typer.Argument(help="The backup file.")],
    identity: Annotated[Path, typer.Option("--identity", help="age identity file (the "
                                           "recovery key).", show_default=False)],
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Target data folder (keys; the SQLite database unless "
        "--database-url).", show_default=False)] = None,
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Target database, e.g. postgresql://enclave@127.0.0.1/enclave.",
        show_default=False)] = None,
    signer: Signer = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a target that holds "
                                        "data.")] = False,
    erasures_from: Annotated[list[Path] | None, typer.Option(
        "--erasures-from", help="A newer backup, or a list from `backup erasures export`, "
        "whose erasures to replay (repeatable).", show_default=False)] = None,
    dev: Annotated[bool, typer.Option("--dev", help="Development mode: a new key-encryption "
                                      "key may stay unsealed.")] = False,
    as_json: Json = False,
) -> None:
    """Verify everything, then restore into an empty target (or, with --force, replace one)."""
    from backup import load_identities, restore_backup
    cli = _cli()
    with _json_errors(as_json):
        settings = _target_settings(data_dir, database_url, dev)
        cli._warn_dev(settings)
        result = restore_backup(file.absolute(), load_identities(identity), settings,
                                principal=cli._operator("admin"), signer=signer, force=force,
                                erasures_from=[p.absolute() for p in erasures_from or []],
                                progress=_progress(as_json, bytes_=True))
    os.chmod(settings.data_dir, 0o700)
    if settings.dev_mode and not (settings.data_dir / cli.DEV_MARKER).exists():
        (settings.data_dir / cli.DEV_MARKER).write_text("Made by `enclave backup restore "
                                                        "--dev`.\n")
    if as_json:
        print(json.dumps({
            "ok": True, "target": result.target, "rows": result.rows,
            "created_at": result.manifest.created_at, "signer": result.signer,
            "appliance_id": result.manifest.appliance_id,
            "erasures_replayed": result.replayed, "erasures_known": result.erasures_known,
            "new_key_encryption_key": result.created_kek, "audit_entries": result.audit_entries,
            "audit_problem": result.audit_problem, "seconds": round(result.seconds, 3)}))
    else:
        kek = "a new key-encryption key" if result.created_kek \
            else "the target's key-encryption key"
        cli.out.print(
            f"restored {result.rows:,} rows from {file.name} (made {result.manifest.created_at})"
            f" into {result.target}\n  data keys wrapped under {kek}; "
            f"{len(result.replayed)} erasure(s) replayed of {result.erasures_known} known",
            highlight=False)
    if result.audit_problem:
        cli.err.print(f"enclave: warning: the restored audit log does not verify: "
                      f"{result.audit_problem}", highlight=False)


# -- list and prune ---------------------------------------------------------------------------

@backup_app.command("list")
def list_(directory: Directory = None, as_json: Json = False) -> None:
    """List the backups in the backup folder, newest first (run verify to check one)."""
    from backup import list_backups
    cli = _cli()
    _named_folder_exists(directory)
    found = list_backups(_backup_dir(cli._settings(), directory))
    if as_json:
        print(json.dumps([b.as_dict() for b in found]))
        return
    if not found:
        cli.out.print("no backups")
    for b in found:
        rows = f"{b.rows:,} rows" if b.rows is not None else "-"
        cli.out.print(f"{b.created:%Y-%m-%d %H:%M:%S}Z  {b.size:>14,} B  {rows:>14}  "
                      f"{b.status:<10}  {b.path.name}", highlight=False)


@backup_app.command("prune")
def prune(
    keep_daily: Annotated[int, typer.Option("--keep-daily", min=0)] = 0,
    keep_weekly: Annotated[int, typer.Option("--keep-weekly", min=0)] = 0,
    keep_monthly: Annotated[int, typer.Option("--keep-monthly", min=0)] = 0,
    directory: Directory = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would go; remove "
                                          "nothing.")] = False,
    as_json: Json = False,
) -> None:
    """Keep the newest backup of the last N days, weeks and months; remove the others."""
    from backup import apply_prune, list_backups, plan_prune
    from backup.retention import payload_problem
    cli = _cli()
    with _json_errors(as_json):
        settings = cli._settings()
        _named_folder_exists(directory)
        plan = plan_prune(list_backups(_backup_dir(settings, directory)), keep_daily=keep_daily,
                          keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                          damaged=payload_problem)
        removed: list[Path] = []
        if not dry_run and plan.remove:
            appliance = cli._open()
            try:
                from schema.context import unit_of_work
                with unit_of_work(appliance, cli._operator("admin")) as ctx:
                    from security.authz import MANAGE
                    ctx.guard.require("key", MANAGE)
                removed = apply_prune(plan)
                _audit(appliance, cli._operator("admin"), "backup.prune",
                       object_ids=[p.name for p in removed],
                       fields=[f"keep_daily:{keep_daily}", f"keep_weekly:{keep_weekly}",
                               f"keep_monthly:{keep_monthly}"])
            finally:
                appliance.close()
    if as_json:
        print(json.dumps({"ok": True, "dry_run": dry_run,
                          "keep": [{"name": p.name, "why": why} for p, why in plan.keep.items()],
                          "remove": [b.path.name for b in plan.remove],
                          "untouched": [b.path.name for b in plan.untouched],
                          "untouched_why": {b.path.name: b.status for b in plan.untouched}}))
        return
    verb = "would remove" if dry_run else "removed"
    for path, why in plan.keep.items():
        cli.out.print(f"keep    {path.name}  ({', '.join(why)})", highlight=False)
    for b in plan.untouched:
        cli.out.print(f"leave   {b.path.name}  ({b.status})", highlight=False)
    for b in plan.remove:
        cli.out.print(f"{verb:<7} {b.path.name}", highlight=False)
    cli.out.print(f"{len(plan.keep)} kept, {len(plan.remove)} {verb}", highlight=False)


# -- recipients -------------------------------------------------------------------------------

@recipients_app.command("add")
def recipients_add(
    recipient: Annotated[str, typer.Argument(help="An age recipient, age1...")],
    label: Annotated[str | None, typer.Option(help="Who holds the identity.")] = None,
) -> None:
    """Encrypt future backups to this recipient too."""
    from backup.recipients import add_recipient
    from schema.context import unit_of_work
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        added = add_recipient(ctx, recipient, label=label)
    cli.out.print(f"added backup recipient {added.recipient}", highlight=False)


@recipients_app.command("remove")
def recipients_remove(recipient: Annotated[str, typer.Argument(help="age1...")]) -> None:
    """Stop encrypting future backups to this recipient (existing backups stay readable)."""
    from backup.recipients import remove_recipient
    from schema.context import unit_of_work
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        remove_recipient(ctx, recipient)
    cli.out.print(f"removed backup recipient {recipient}", highlight=False)


@recipients_app.command("list")
def recipients_list(as_json: Json = False) -> None:
    """The recipients, and the fingerprint that signs this appliance's backups."""
    from backup import appliance_anchor
    from backup.recipients import list_recipients
    from schema.context import unit_of_work
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        found = list_recipients(ctx)
    signer = appliance_anchor(appliance).fingerprints[-1]
    if as_json:
        print(json.dumps({"signer": signer, "recipients": [r.as_dict() for r in found]}))
        return
    cli.out.print(f"backups are signed by {signer}", highlight=False)
    if not found:
        cli.out.print("no recipients: `enclave backup create` refuses until one is added")
    for r in found:
        cli.out.print(f"{r.recipient}  {r.label or '-'}  added {r.added_at} by {r.added_by}",
                      highlight=False)


# -- erasures ---------------------------------------------------------------------------------

@erasures_app.command("export")
def erasures_export(
    out_file: Annotated[Path | None, typer.Option("--out", help="Write here instead of "
                                                  "stdout.", show_default=False)] = None,
) -> None:
    """Every erasure recorded here, as JSON for `backup restore --erasures-from`."""
    from backup.erasures import export_erasures
    from schema.context import unit_of_work
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        document = export_erasures(ctx)
    text = json.dumps(document, indent=1) + "\n"
    if out_file is None:
        sys.stdout.write(text)
    else:
        with replaced_when_done(out_file) as handle:
            handle.write(text)
        cli.out.print(f"{len(document['erasures'])} erasure(s) written to {out_file}",
                      highlight=False)
