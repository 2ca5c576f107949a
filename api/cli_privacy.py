"""`enclave subject ...` (data-subject rights) and `enclave retention ...` (retention rules).

They call the same operations as GraphQL (`schema.ops.privacy`, `schema.ops.retention`) as the
local operator with the privacy_officer role (subject rights) or admin (retention), audited.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Annotated

import typer

from security.errors import BadUserInput

subject_app = typer.Typer(help="Data-subject rights: export or erase everything held on a "
                          "person.", no_args_is_help=True)
retention_app = typer.Typer(help="Retention rules: erase records once they are old enough.",
                            no_args_is_help=True)


def _cli() -> ModuleType:
    from api import cli
    return cli


@subject_app.command("export")
def subject_export(
    contact_id: Annotated[str, typer.Argument(help="The contact's id.")],
) -> None:
    """Print everything held on a person as JSON (audited as subject.export)."""
    from schema.context import unit_of_work
    from schema.ops import privacy
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("privacy_officer")) as ctx:
        document = privacy.export_subject(ctx, contact_id)
    print(json.dumps(document, indent=2, sort_keys=True))


@subject_app.command("erase")
def subject_erase(
    contact_id: Annotated[str, typer.Argument(help="The contact's id.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this cannot be undone.")] = False,
) -> None:
    """Erase a person: delete their records and destroy their keys (audited as subject.erase)."""
    from schema.context import unit_of_work
    from schema.ops import privacy
    if not yes:
        raise BadUserInput("erasure cannot be undone; add --yes to confirm", field="yes")
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("privacy_officer")) as ctx:
        report = privacy.erase_subject(ctx, contact_id)
    counts = ", ".join(f"{len(ids)} {kind}" for kind, ids in report.erased.items())
    cli.out.print(f"erased {report.contact_id}: {counts}; "
                  f"{len(report.unlinked_opportunities)} opportunities unlinked", highlight=False)


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would be erased.")
                       ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Apply every retention rule (audited as retention.run, with the ids)."""
    from schema.context import unit_of_work
    from schema.ops import retention
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        results = retention.run(ctx, dry_run=dry_run)
    if as_json:
        print(json.dumps([{"object_type": r.object_type, "condition": r.condition,
                           "days": r.days, "ids": r.ids} for r in results]))
        return
    verb = "would erase" if dry_run else "erased"
    if not results:
        cli.out.print("no retention rules set", highlight=False)
    for r in results:
        cli.out.print(f"{r.object_type:<10} {r.condition:<12} older than {r.days} days: "
                      f"{verb} {len(r.ids)}", highlight=False)


@retention_app.command("set")
def retention_set(
    object_type: Annotated[str, typer.Argument(help="lead, activity or case.")],
    days: Annotated[int, typer.Option("--days", help="Age in days.")],
    condition: Annotated[str, typer.Option("--condition", help="lead: unconverted|any; "
                                           "activity: done|any; case: closed|resolved.")],
) -> None:
    """Set (or replace) the retention rule of an object type."""
    from schema.context import unit_of_work
    from schema.ops import retention
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        rule = retention.set_rule(ctx, object_type, days, condition)
        text = f"{rule.object_type}: {rule.condition} older than {rule.days} days"
    cli.out.print(f"retention rule set: {text}", highlight=False)


@retention_app.command("list")
def retention_list() -> None:
    """List the retention rules."""
    from schema.context import unit_of_work
    from schema.ops import retention
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        rows = [(r.object_type, r.condition, r.days) for r in retention.list_rules(ctx)]
    for object_type, condition, days in rows:
        cli.out.print(f"{object_type:<10} {condition:<12} {days} days", highlight=False)
