"""`enclave documents ...`: the trusted GraphQL documents each application may send.

    enclave documents add --client C FILE.graphql [FILE ...]   one document per file
    enclave documents add --client C manifest.json             Apollo / Relay manifests
    enclave documents list [--client C] [--json]
    enclave documents remove sha256:... [--client C]           unbind one client, or remove

Each document is checked against the schema when it is registered; ids are `sha256:` of the
exact text. Admin operations (`document` manage), audited.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Annotated

import typer

from security.errors import BadUserInput

documents_app = typer.Typer(help="Trusted GraphQL documents (the operations each API client "
                            "may send).", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _cli() -> ModuleType:
    from api import cli
    return cli


@documents_app.command("add")
def documents_add(
    files: Annotated[list[Path], typer.Argument(help="GraphQL files, or JSON manifests "
                                                "(hash -> document).")],
    client: Annotated[list[str], typer.Option(help="API client id allowed to send them "
                                              "(repeatable).")],
    as_json: Json = False,
) -> None:
    """Register documents for API clients (validated against the schema now)."""
    from schema.context import unit_of_work
    from schema.graphql.execution import validate_document
    from schema.ops import documents
    cli = _cli()
    texts: list[tuple[Path, str]] = []
    for path in files:
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise BadUserInput(f"cannot read {path}: {exc}", field="file") from None
    appliance = cli._open()
    registered = []
    try:
        with unit_of_work(appliance, cli._operator("admin")) as ctx:
            for path, text in texts:
                try:
                    if path.suffix.lower() == ".json":
                        registered += documents.add_manifest(ctx, text, clients=client,
                                                             name=path.name,
                                                             validate=validate_document)
                    else:
                        registered.append(documents.add_document(ctx, text, clients=client,
                                                                 name=path.name,
                                                                 validate=validate_document))
                except BadUserInput as exc:  # several files: say which one, nothing is kept
                    raise BadUserInput(f"{path}: {exc.message}; no file was registered",
                                       **exc.extra) from None
    finally:
        appliance.close()
    if as_json:
        print(json.dumps([{"id": r.id, "name": r.name, "clients": r.clients,
                           "created": r.created} for r in registered]))
        return
    for r in registered:
        cli.out.print(f"{'registered' if r.created else 'bound':<10} {r.id}  {r.name or '-'}  "
                      f"clients: {', '.join(r.clients)}", highlight=False)


@documents_app.command("list")
def documents_list(
    client: Annotated[str | None, typer.Option(help="Only those bound to this client.")] = None,
    as_json: Json = False,
) -> None:
    """List registered documents and the clients bound to each."""
    from schema.context import unit_of_work
    from schema.ops import documents
    cli = _cli()
    appliance = cli._open()
    try:
        with unit_of_work(appliance, cli._operator("admin")) as ctx:
            rows = [dict(documents.as_dict(r))
                    for r in documents.list_documents(ctx, client=client)]
    finally:
        appliance.close()
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        cli.out.print(f"{row['id']}  {row['name'] or '-':<24} {row['bytes']:>6} B  clients: "
                      f"{', '.join(row['clients'])}", highlight=False)


@documents_app.command("remove")
def documents_remove(
    document_id: Annotated[str, typer.Argument(help="sha256:... as `list` shows it.")],
    client: Annotated[str | None, typer.Option(help="Unbind only this client (the document "
                                               "goes when no client is left).")] = None,
) -> None:
    """Remove a document, or unbind one client from it."""
    from schema.context import unit_of_work
    from schema.ops import documents
    cli = _cli()
    appliance = cli._open()
    try:
        with unit_of_work(appliance, cli._operator("admin")) as ctx:
            gone = documents.remove_document(ctx, document_id, client=client)
    finally:
        appliance.close()
    cli.out.print(f"removed {document_id}" if gone else f"unbound {client} from {document_id}",
                  highlight=False)
