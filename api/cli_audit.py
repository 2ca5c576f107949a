"""`enclave audit ...`: verify, checkpoint, export evidence, print the public key, compare with
what was shipped to a syslog/SIEM. Errors are one line on stderr and exit 1."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

from api.cli_files import replaced_when_done
from security.errors import BadUserInput, EnclaveError

audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _cli() -> ModuleType:
    from api import cli
    return cli


def _officer() -> Any:
    return _cli()._operator("security_officer")


@audit_app.command("verify")
def audit_verify(as_json: Json = False) -> None:
    """Check the hash chain, the Merkle tree and the signed checkpoints; exit 1 naming the
    first bad entry."""
    from schema.context import unit_of_work
    from schema.ops import audit_log
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, _officer()) as ctx:
        report = audit_log.verify(ctx)
    if as_json:
        print(json.dumps({"ok": report.ok, "entries": report.entries,
                          "checkpoints": report.checkpoints, "first_bad_seq": report.first_bad_seq,
                          "problem": report.problem, "last_checkpoint": report.last_checkpoint,
                          "tree_size": report.tree_size, "root": report.root,
                          "notes": report.notes}))
    elif report.ok:
        cli.out.print(f"audit log intact: {report.entries} entries, {report.checkpoints} signed "
                      f"checkpoints, Merkle root {report.root}", highlight=False)
        for note in report.notes:
            cli.out.print(f"  note: {note}", highlight=False)
    if not report.ok:
        cli.err.print(f"enclave: audit log TAMPERED: first bad entry {report.first_bad_seq}: "
                      f"{report.problem}", highlight=False)
        raise typer.Exit(cli.EXIT_FAILED)


def _sign_now(appliance: Any) -> Any:
    from security import audit
    with appliance.sessions() as session, session.begin():
        return audit.checkpoint_now(session, appliance.keyring,
                                    checkpoint_every=appliance.settings.audit_checkpoint_every)


def _ship_now(appliance: Any) -> None:
    """Ship pending checkpoints before the command ends, when a destination is configured."""
    from security import audit_ship
    target = appliance.settings.audit_syslog
    if target is None:
        return
    cli = _cli()
    try:
        sent = audit_ship.ship_pending(appliance.sessions, target)
    except OSError as exc:
        cli.err.print(f"enclave: warning: could not ship checkpoints to {target} ({exc}); "
                      "they are sent again with the next checkpoint", highlight=False)
        return
    if sent:
        cli.out.print(f"shipped {sent} checkpoint(s) to {target}", highlight=False)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign the current end of the log now (and ship it, when ENCLAVE_AUDIT_SYSLOG is set)."""
    cli = _cli()
    appliance = cli._open()
    checkpoint = _sign_now(appliance)
    cli.out.print(f"signed checkpoint at entry {checkpoint.seq}" if checkpoint
                  else "the end of the log is already signed")
    _ship_now(appliance)


def _time(value: str | None, option: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise EnclaveError(f"{option} must be an ISO 8601 date or time, not {value!r}") from None
    try:
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
    except OverflowError:
        raise EnclaveError(f"{option} is out of range: {value!r}") from None


@audit_app.command("export")
def audit_export(
    out_file: Annotated[Path, typer.Option("--out", help="Evidence file to write (JSON lines).")],
    actor: Annotated[str | None, typer.Option(help="Only entries by this actor.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. contact.read.")] = None,
    object_type: Annotated[str | None, typer.Option(help="Only this object type.")] = None,
    object_id: Annotated[str | None, typer.Option(help="Only entries naming this id.")] = None,
    decision: Annotated[str | None, typer.Option(help="allow, deny or error.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no "
                                              "zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
    as_json: Json = False,
) -> None:
    """Export the selected entries as signed evidence: each with its inclusion proof, the
    checkpoints with their consistency proofs, and a signed manifest. Check it offline with
    `enclave-verify FILE --key KEY`."""
    from schema.context import unit_of_work
    from schema.ops import audit_log
    cli = _cli()
    if decision is not None and decision not in ("allow", "deny", "error"):
        raise BadUserInput(f"--decision is allow, deny or error, not {decision!r}",
                           field="decision")
    selection = audit_log.AuditFilter(
        actor=actor, action=action, object_type=object_type, object_id=object_id,
        decision=decision, since=_time(since, "--since"), until=_time(until, "--until"))
    appliance = cli._open()
    _sign_now(appliance)  # its own short transaction: the newest entries are proven too
    out_file = out_file.absolute()
    with replaced_when_done(out_file) as handle, unit_of_work(appliance, _officer()) as ctx:
        summary = audit_log.export(ctx, handle, filter=selection)
        keys = audit_log.public_keys(ctx)
    _ship_now(appliance)
    if as_json:
        print(json.dumps({"file": str(out_file), "events": summary.events,
                          "tree_size": summary.tree_size, "root": summary.root,
                          "checkpoints": summary.checkpoints, "unsigned": summary.unsigned,
                          "verifier_key": keys[0].verifier_key}))
        return
    cli.out.print(f"exported {summary.events} events, proven against the checkpoint at tree "
                  f"size {summary.tree_size} ({summary.checkpoints} checkpoints), to {out_file}",
                  highlight=False)
    if summary.unsigned:
        cli.out.print(f"  {summary.unsigned} newer matching entries are not yet signed; export "
                      "again to include them", highlight=False)
    cli.out.print(f"check it on any machine: enclave-verify {out_file} --key "
                  f"'{keys[0].verifier_key}'", highlight=False)


@audit_app.command("public-key")
def audit_public_key(as_json: Json = False) -> None:
    """Print the key that checks this appliance's checkpoints and evidence offline (a signed-note
    verifier key, newest first; give it to `enclave-verify --key`)."""
    from schema.context import unit_of_work
    from schema.ops import audit_log
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, _officer()) as ctx:
        keys = audit_log.public_keys(ctx)
    if as_json:
        print(json.dumps([key.as_dict() for key in keys]))
        return
    for key in keys:
        print(key.verifier_key)


@audit_app.command("compare-shipped")
def audit_compare_shipped(
    shipped: Annotated[Path, typer.Argument(help="Checkpoints the syslog/SIEM received (its "
                                            "export, or notes one after another).")],
    as_json: Json = False,
) -> None:
    """Compare the log with the checkpoints shipped off the appliance: a log shorter than a
    shipped checkpoint was truncated, one with another root was rewritten (exit 1)."""
    from schema.context import unit_of_work
    from schema.ops import audit_log
    cli = _cli()
    try:
        text = shipped.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnclaveError(f"cannot read {shipped}: {exc}") from None
    appliance = cli._open()
    with unit_of_work(appliance, _officer()) as ctx:
        report = audit_log.compare_shipped(ctx, text)
    if as_json:
        print(json.dumps(report.as_dict()))
    elif report.ok and report.checked:
        cli.out.print(f"the log ({report.log_size} entries) holds all {report.checked} shipped "
                      "checkpoints", highlight=False)
    for note in report.ignored if not as_json else []:
        cli.err.print(f"enclave: warning: ignored {note}", highlight=False)
    if not report.ok:
        cli.err.print(f"enclave: audit log {report.verdict.upper()}: {report.problem}",
                      highlight=False)
        raise typer.Exit(cli.EXIT_FAILED)
    if report.checked == 0:
        cli.err.print("enclave: no checkpoint of this appliance found in the file",
                      highlight=False)
        raise typer.Exit(cli.EXIT_FAILED)
