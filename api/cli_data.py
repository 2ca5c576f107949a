"""`enclave custom-fields ...`, `enclave import ...`, `enclave export ...` and
`enclave webhooks ...`: the same operations as the GraphQL API, for a principal built from the
command line (`--as-role`, `--team`) like every other CLI command, audited the same way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

import typer

# Imported for its side effect too: record events of every CLI command queue webhook deliveries.
import schema.ops.webhooks  # noqa: F401
from api.cli_files import replaced_when_done
from security.errors import BadUserInput, EnclaveError

custom_fields_app = typer.Typer(help="Custom fields on CRM objects (admin).", no_args_is_help=True)
import_app = typer.Typer(help="Import accounts, contacts or leads from CSV.", no_args_is_help=True)
export_app = typer.Typer(help="Export accounts, contacts or leads as CSV (only the columns the "
                         "role may read).", no_args_is_help=True)
webhooks_app = typer.Typer(help="Signed outbound webhooks (admin).", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
AsRole = Annotated[list[str], typer.Option("--as-role", help="Role to act as (repeatable).")]
Team = Annotated[str | None, typer.Option("--team", help="Team to act for.")]


def _cli() -> ModuleType:
    from api import cli
    return cli


def _admin_unit() -> Any:
    from schema.context import unit_of_work
    cli = _cli()
    return unit_of_work(cli._open(), cli._operator("admin"))


# -- custom fields ------------------------------------------------------------------------------

@custom_fields_app.command("define")
def custom_fields_define(
    object_type: Annotated[str, typer.Argument(help="account, contact, lead, ...")],
    key: Annotated[str, typer.Argument(
        help="A lower-case letter, then up to 40 of a-z, 0-9 and _.")],
    value_type: Annotated[str, typer.Option("--type", help="text, number, boolean or date")],
    classification: Annotated[str, typer.Option(help="public, internal, confidential or "
                                                "restricted")],
    label: Annotated[str | None, typer.Option(help="A label for people.")] = None,
) -> None:
    """Add a custom field; confidential and restricted values are encrypted."""
    from schema.ops import custom_fields
    with _admin_unit() as ctx:
        row = custom_fields.define(ctx, object_type=object_type, key=key, value_type=value_type,
                                   classification=classification, label=label)
        text = f"defined {row.object_type}.{row.key} ({row.value_type}, {row.classification})"
    _cli().out.print(text, highlight=False)


@custom_fields_app.command("list")
def custom_fields_list(object_type: str, as_json: Json = False) -> None:
    """List the custom fields of an object type."""
    from schema.ops import custom_fields
    with _admin_unit() as ctx:
        rows = [{"key": r.key, "type": r.value_type, "classification": r.classification,
                 "label": r.label} for r in custom_fields.definitions(ctx, object_type)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        _cli().out.print(f"{row['key']:<24} {row['type']:<8} {row['classification']:<13} "
                         f"{row['label'] or ''}", highlight=False)


@custom_fields_app.command("remove")
def custom_fields_remove(object_type: str, key: str) -> None:
    """Remove a custom field and its values from every record."""
    from schema.ops import custom_fields
    with _admin_unit() as ctx:
        removed = custom_fields.remove(ctx, object_type=object_type, key=key)
    _cli().out.print(f"removed {object_type}.{key} ({removed.values_removed} records changed)",
                     highlight=False)


# -- import / export ----------------------------------------------------------------------------

def _import(object_type: str, path: Path, all_or_nothing: bool, roles: list[str],
            team: str | None, as_json: bool) -> None:
    from schema.context import unit_of_work
    from schema.ops import data_transfer
    cli = _cli()
    if not roles:
        raise BadUserInput("name the role to import as with --as-role", field="as-role")
    appliance = cli._open()
    with open(path, encoding="utf-8-sig", newline="") as stream, \
            unit_of_work(appliance, cli._operator(*roles, team=team)) as ctx:
        result = data_transfer.import_csv(ctx, object_type, stream,
                                          all_or_nothing=all_or_nothing)
    if as_json:
        print(json.dumps({"created": result.created, "rejected_count": result.rejected_count,
                          "rolled_back": result.rolled_back,
                          "rejected": [vars(r) for r in result.rejected]}))
    else:
        for r in result.rejected:
            cli.err.print(f"row {r.row}{f' ({r.field})' if r.field else ''}: {r.message}",
                          highlight=False)
    if result.rolled_back:
        raise EnclaveError(f"{result.rejected_count} row(s) rejected; nothing was imported "
                           "(--all-or-nothing)")
    if not as_json:
        cli.out.print(f"imported {result.created} {object_type}(s), rejected "
                      f"{result.rejected_count}", highlight=False)
    if result.rejected_count:
        sys.exit(1)


def _export(object_type: str, output: Path | None, roles: list[str], team: str | None) -> None:
    from schema.context import unit_of_work
    from schema.ops import data_transfer
    cli = _cli()
    if not roles:
        raise BadUserInput("name the role to export as with --as-role", field="as-role")
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator(*roles, team=team)) as ctx:
        if output is None:
            result = data_transfer.export_csv(ctx, object_type, sys.stdout)
        else:
            with replaced_when_done(output, newline="") as stream:
                result = data_transfer.export_csv(ctx, object_type, stream)
    if result.omitted:
        cli.err.print(f"left out (not readable as {', '.join(roles)}): "
                      f"{', '.join(result.omitted)}", highlight=False)
    if output is not None:
        cli.err.print(f"exported {result.rows} {object_type}(s) to {output}", highlight=False)


FileArg = Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="The CSV file (header row first).")]
AllOrNothing = Annotated[bool, typer.Option("--all-or-nothing",
                                            help="Write nothing unless every row is good.")]
Output = Annotated[Path | None, typer.Option("-o", "--output",
                                             help="Write here instead of standard output.")]


def _make_transfer_commands(plural: str, object_type: str) -> None:
    @import_app.command(plural)
    def import_command(file: FileArg, all_or_nothing: AllOrNothing = False,
                       as_role: AsRole = [], team: Team = None,  # noqa: B006
                       as_json: Json = False) -> None:
        _import(object_type, file, all_or_nothing, as_role, team, as_json)

    import_command.__doc__ = f"Import {plural} from a CSV file."

    @export_app.command(plural)
    def export_command(output: Output = None, as_role: AsRole = [],  # noqa: B006
                       team: Team = None) -> None:
        _export(object_type, output, as_role, team)

    export_command.__doc__ = f"Export the {plural} the role may see as CSV."


for _plural, _object in (("accounts", "account"), ("contacts", "contact"), ("leads", "lead")):
    _make_transfer_commands(_plural, _object)


# -- webhooks -----------------------------------------------------------------------------------

@webhooks_app.command("register")
def webhooks_register(
    client_id: Annotated[str, typer.Option("--client-id", help="The API client whose roles "
                                           "decide what payloads carry.")],
    url: Annotated[str, typer.Option(help="http(s) URL to POST events to.")],
    event: Annotated[list[str], typer.Option("--event", help="Event type, e.g. "
                                             "contact.created (repeatable).")],
    as_json: Json = False,
) -> None:
    """Register a webhook; its signing secret is printed once."""
    from schema.ops import webhooks
    with _admin_unit() as ctx:
        registered = webhooks.register(ctx, client_id=client_id, url=url, event_types=event)
        webhook_id = registered.webhook.id
    if as_json:
        print(json.dumps({"id": webhook_id, "secret": registered.secret}))
    else:
        _cli().out.print(f"webhook: {webhook_id}\nsecret:  {registered.secret}\n"
                         "The secret is shown once; store it now.", highlight=False)


@webhooks_app.command("list")
def webhooks_list(as_json: Json = False) -> None:
    """List webhooks (never their secrets)."""
    from schema.ops import webhooks
    with _admin_unit() as ctx:
        rows: list[dict[str, Any]] = [{"id": w.id, "client_id": w.client_id, "url": w.url,
                 "event_types": list(w.event_types),
                 "disabled": w.disabled_at is not None} for w in webhooks.list_webhooks(ctx)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        state = "disabled" if row["disabled"] else "enabled"
        _cli().out.print(f"{row['id']}  {state:<8} {row['url']}  {','.join(row['event_types'])}",
                         highlight=False)


@webhooks_app.command("disable")
def webhooks_disable(webhook_id: str) -> None:
    """Stop sending events to a webhook."""
    from schema.ops import webhooks
    with _admin_unit() as ctx:
        webhooks.disable(ctx, webhook_id)
    _cli().out.print(f"disabled {webhook_id}", highlight=False)


@webhooks_app.command("deliveries")
def webhooks_deliveries(webhook_id: str, as_json: Json = False) -> None:
    """A webhook's newest deliveries and their attempts."""
    from schema.ops import webhooks
    with _admin_unit() as ctx:
        rows = [{"id": d.id, "event": d.event, "object_id": d.object_id, "status": d.status,
                 "attempts": d.attempts, "last_status_code": d.last_status_code,
                 "last_error": d.last_error, "next_attempt_at": d.next_attempt_at.isoformat()}
                for d in webhooks.deliveries(ctx, webhook_id)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        _cli().out.print(f"{row['id']}  {row['event']:<20} {row['status']:<9} "
                         f"attempts={row['attempts']} code={row['last_status_code'] or '-'} "
                         f"{row['last_error'] or ''}", highlight=False)


@webhooks_app.command("deliver")
def webhooks_deliver(
    every: Annotated[float | None, typer.Option(
        "--every", min=1.0, help="Keep running: send what is due, then again every SECONDS "
        "(until stopped with SIGTERM or Ctrl-C). Without it: send once and exit.",
        show_default=False)] = None,
) -> None:
    """Send every due delivery (once, or every SECONDS as a long-running service)."""
    from api.webhook_delivery import deliver_due, deliver_every
    appliance = _cli()._open()
    if every is None:
        run = deliver_due(appliance)
        _cli().out.print(f"delivered {run.delivered}, retrying {run.retrying}, "
                         f"failed {run.failed}", highlight=False)
        return
    _cli().out.print(f"delivering webhooks every {every:g} s", highlight=False)
    totals = deliver_every(appliance, every)
    _cli().out.print(f"stopped: delivered {totals.delivered}, retrying {totals.retrying}, "
                     f"failed {totals.failed}", highlight=False)
