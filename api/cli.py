"""The `enclave` command line. Errors are one line on stderr and a non-zero exit."""

from __future__ import annotations

import atexit
import getpass
import json
import logging
import os
import random
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from api.cli_audit import audit_app
from api.cli_backup import backup_app
from api.cli_data import custom_fields_app, export_app, import_app, webhooks_app
from api.cli_documents import documents_app
from api.cli_preflight import preflight_app
from api.cli_privacy import retention_app, subject_app
from api.cli_users import users_app, web_clients_app
from security.config import Settings
from security.errors import BadUserInput, ConfigurationError, EnclaveError
from security.principal import Principal

app = typer.Typer(help="Enclave: the security-hardened CRM appliance.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
clients_app = typer.Typer(help="API clients (internal applications).", no_args_is_help=True)
keys_app = typer.Typer(help="Key rotation and re-encryption.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="backup")
app.add_typer(preflight_app, name="preflight")
app.add_typer(users_app, name="users")
app.add_typer(web_clients_app, name="web-clients")
app.add_typer(documents_app, name="documents")
app.add_typer(subject_app, name="subject")
app.add_typer(retention_app, name="retention")
app.add_typer(custom_fields_app, name="custom-fields")
app.add_typer(import_app, name="import")
app.add_typer(export_app, name="export")
app.add_typer(webhooks_app, name="webhooks")

# Markup off: names, paths, URLs and messages the CLI prints come from users, and rich would
# read "[/x]" in them as a closing tag (and raise). The few styled lines opt in with fixed text.
out = Console(soft_wrap=True, markup=False)
err = Console(stderr=True, soft_wrap=True, markup=False)

DEV_MARKER = "DEVELOPMENT-MODE"
EXIT_FAILED, EXIT_CONFIG, EXIT_INTERNAL = 1, 3, 70

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data folder (default ./var or "
                                              "$ENCLAVE_DATA_DIR).", show_default=False)]


class _State:
    data_dir: Path | None = None


def _settings(*, dev: bool = False) -> Settings:
    settings = Settings.from_env(data_dir=_State.data_dir)
    if dev or (settings.data_dir / DEV_MARKER).exists():
        settings = Settings.from_env(data_dir=settings.data_dir, dev_mode=True)
    return settings


def _warn_dev(settings: Settings) -> None:
    if settings.dev_mode:
        err.print("[bold yellow]DEVELOPMENT MODE[/]: the key-encryption key may be unsealed; "
                  "never use this data folder for real data.", highlight=False, markup=True)


def _operator(*roles: str, team: str | None = None) -> Principal:
    user = getpass.getuser()
    return Principal(id=user, name=user, roles=roles, team=team, kind="operator")


def _open() -> Any:
    from schema.runtime import Appliance
    settings = _settings()
    _warn_dev(settings)
    appliance = Appliance.open(settings)
    if appliance.shipper is not None:  # ship a checkpoint the command signed before it ends
        atexit.register(appliance.shipper.close)
    return appliance


@app.callback()
def main_options(data_dir: DataDir = None) -> None:
    _State.data_dir = data_dir


@app.command()
def init(dev: Annotated[bool, typer.Option("--dev", help="Development mode: the key-encryption "
                                           "key may stay unsealed.")] = False) -> None:
    """Create the data folder, keys and database; issue the bootstrap admin client once."""
    from schema.runtime import initialise
    settings = _settings(dev=dev)
    _warn_dev(settings)
    result = initialise(settings)
    if settings.dev_mode and not (settings.data_dir / DEV_MARKER).exists():
        (settings.data_dir / DEV_MARKER).write_text("This data folder was made by `enclave init --dev`.\n")
    _report_init(settings, result)


def _report_init(settings: Settings, result: Any) -> None:
    if result.bootstrap_secret:
        out.print("[bold]Bootstrap admin client (shown once):[/]", markup=True)
        out.print(f"  client_id:     {result.bootstrap_client_id}")
        out.print(f"  client_secret: {result.bootstrap_secret}")
        out.print(f"  also written to {settings.bootstrap_credentials_path} (mode 0600)")
    else:
        out.print(f"Data folder {settings.data_dir} is ready (bootstrap client already issued).")


@app.command()
def serve(
    dev: Annotated[bool, typer.Option("--dev", help="Development mode: initialise ./var if "
                                      "needed and allow an unsealed key.")] = False,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Serve the GraphQL API, token endpoint and health checks."""
    import uvicorn

    from api.app import create_app
    from schema.runtime import Appliance, initialise
    settings = _settings(dev=dev)
    settings = Settings.from_env(data_dir=settings.data_dir, dev_mode=settings.dev_mode,
                                 host=host, port=port)
    if settings.dev_mode:
        err.print("\n[bold red on yellow] ENCLAVE IS RUNNING IN DEVELOPMENT MODE [/] ",
                  end="", highlight=False, markup=True)
        err.print(f"data in {settings.data_dir}; not for real personal data.\n", highlight=False)
        result = initialise(settings)
        if not (settings.data_dir / DEV_MARKER).exists():
            (settings.data_dir / DEV_MARKER).write_text("Made by `enclave serve --dev`.\n")
        _report_init(settings, result)
    if not settings.dev_mode and _granian_present():  # production: a worker per core
        from api import serving
        # Open it once here, so that a data folder that is not initialised, a sealed key
        # without its passphrase or an unreachable database is one line and exit 3 before
        # anything listens, not a traceback from every worker granian restarts.
        Appliance.open(settings).close()
        out.print(f"Enclave listening on http://{settings.host}:{settings.port} with "
                  f"{serving.worker_count(settings)} workers (docs/performance.md)")
        serving.serve(settings)
        return
    appliance = Appliance.open(settings)
    out.print(f"Enclave listening on http://{settings.host}:{settings.port} "
              "(GraphQL at /graphql, health at /healthz and /readyz)")
    uvicorn.run(create_app(appliance), host=settings.host, port=settings.port,
                log_level="info", server_header=False, proxy_headers=False)


def _granian_present() -> bool:
    import importlib.util
    return importlib.util.find_spec("granian") is not None


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Option(help="A name for the application.")],
    role: Annotated[list[str], typer.Option(help="Role to grant (repeatable).")],
    team: Annotated[str | None, typer.Option(help="Team the client acts for.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a client; its secret is printed once and never stored in the clear."""
    from schema.context import unit_of_work
    from schema.ops import clients
    appliance = _open()
    with unit_of_work(appliance, _operator("admin")) as ctx:
        issued = clients.create_client(ctx, name=name, roles=role, team=team)
        client_id, roles, team_ = issued.client.id, issued.client.roles, issued.client.team
    if as_json:
        print(json.dumps({"client_id": client_id, "client_secret": issued.secret,
                          "roles": roles, "team": team_}))
    else:
        out.print(f"client_id:     {client_id}\nclient_secret: {issued.secret}\n"
                  f"roles:         {', '.join(roles)}\nteam:          {team_ or '-'}\n"
                  "The secret is shown once; store it now.", highlight=False)


@clients_app.command("list")
def clients_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List clients (never their secrets)."""
    from schema.context import unit_of_work
    from schema.ops import clients
    appliance = _open()
    with unit_of_work(appliance, _operator("admin")) as ctx:
        rows: list[dict[str, Any]] = [{"client_id": c.id, "name": c.name, "roles": c.roles, "team": c.team,
                 "created_at": c.created_at.isoformat(),
                 "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None}
                for c in clients.list_clients(ctx)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else "active"
        out.print(f"{row['client_id']}  {row['name']:<20} {','.join(row['roles']):<24} "
                  f"{row['team'] or '-':<12} {state}", highlight=False)


@clients_app.command("revoke")
def clients_revoke(client_id: str) -> None:
    """Revoke a client: its tokens stop working at once."""
    from schema.context import unit_of_work
    from schema.ops import clients
    appliance = _open()
    with unit_of_work(appliance, _operator("admin")) as ctx:
        clients.revoke_client(ctx, client_id)
    out.print(f"revoked {client_id}")


@keys_app.command("rotate")
def keys_rotate() -> None:
    """Add a new field-key version; new writes use it, old versions still decrypt."""
    from schema.context import unit_of_work
    from schema.ops import keys
    appliance = _open()
    with unit_of_work(appliance, _operator("admin")) as ctx:
        version = keys.rotate_field_key(ctx)
    out.print(f"field key version {version} is now current; run `enclave keys reencrypt` "
              "to move existing rows to it")


@keys_app.command("reencrypt")
def keys_reencrypt(
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 200,
) -> None:
    """Move every sealed record (every object, TOTP secrets, webhook secrets) to the newest
    field key, batch by batch (resumable, online)."""
    from schema.context import unit_of_work
    from schema.ops import keys
    appliance = _open()
    moved = 0
    while True:
        with unit_of_work(appliance, _operator("admin")) as ctx:
            batch = keys.reencrypt_batch(ctx, batch_size=batch_size)
        moved += batch.moved
        if batch.remaining == 0 or batch.moved == 0:
            break
        err.print(f"moved {moved}, {batch.remaining} to go", highlight=False)
    if batch.remaining:
        raise EnclaveError(f"{batch.remaining} rows are locked by other writers; run again")
    retired = f"; retired versions {', '.join(map(str, batch.retired_versions))}" \
        if batch.retired_versions else ""
    out.print(f"re-encrypted {moved} records to field key version {batch.target_version}"
              f"{retired}")


@app.command()
def demo(
    contacts: Annotated[int, typer.Option("--contacts", min=1, max=1_000_000)] = 100,
    team: Annotated[str, typer.Option(help="Team that owns the demo records.")] = "sales",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
) -> None:
    """Fill every module with synthetic data owned by TEAM: accounts, contacts, leads (some
    converted), opportunities across the pipeline, activities, cases, campaigns and consent."""
    from api import demo_crm, demo_data
    from schema.context import unit_of_work
    from schema.ops import accounts as account_ops
    from schema.ops import contacts as contact_ops
    from schema.ops import validation
    team = validation.team("--team", team) or ""
    if not team:
        raise BadUserInput("--team names the team that owns the demo records", field="team")
    appliance = _open()
    rng = random.Random(seed)
    principal = _operator("sales_manager", team=team)
    with unit_of_work(appliance, principal) as ctx:
        account_ids = [account_ops.create_account(ctx, data).id
                       for data in demo_data.accounts(max(1, min(50, contacts // 10)), rng)]
    contact_ids: list[str] = []
    batch = list(demo_data.contacts(contacts, rng))
    for start in range(0, len(batch), 500):
        with unit_of_work(appliance, principal) as ctx:
            for data in batch[start:start + 500]:
                contact_ids.append(contact_ops.create_contact(
                    ctx, {**data, "account_id": rng.choice(account_ids)}).id)
    # Cases and campaigns are support's and marketing's work: the demo acts as all three.
    worker = _operator("sales_manager", "support_agent", "marketing", team=team)
    counts = demo_crm.fill_modules(appliance, worker, contact_ids, account_ids, rng)
    out.print(f"created in team '{team}': {len(account_ids)} accounts, {len(contact_ids)} "
              f"contacts, {counts.leads} leads ({counts.converted} converted), "
              f"{counts.opportunities} opportunities, {counts.activities} activities, "
              f"{counts.cases} cases, {counts.campaigns} campaigns ({counts.members} members), "
              f"{counts.consents} consents. Read them with a client made by: enclave clients "
              f"create --name demo --role sales_manager --team {team}", highlight=False)


def main() -> None:
    os.umask(0o077)  # the database, keys and credentials are for the service user only
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ConfigurationError as exc:
        err.print(f"enclave: configuration error: {exc.message}", highlight=False)
        sys.exit(EXIT_CONFIG)
    except EnclaveError as exc:
        # Backup refusals carry their own exit code and name (bad signature, tampered, ...).
        code = getattr(exc, "exit_code", EXIT_FAILED)
        kind = f"backup refused ({getattr(exc, 'label', '')})" if code != EXIT_FAILED else "error"
        err.print(f"enclave: {kind}: {exc.message}", highlight=False)
        sys.exit(code)
    except KeyboardInterrupt:
        err.print("enclave: interrupted", highlight=False)
        sys.exit(130)
    except OSError as exc:  # a path that is a directory, has no parent, may not be written...
        where = f": {exc.filename}" if exc.filename else ""
        err.print(f"enclave: error: {exc.strerror or exc}{where}", highlight=False)
        sys.exit(EXIT_FAILED)
    except UnicodeError:
        err.print("enclave: error: the input is not UTF-8 text", highlight=False)
        sys.exit(EXIT_FAILED)
    except Exception as exc:  # one line, never a traceback, unless asked for
        if os.environ.get("ENCLAVE_DEBUG"):
            raise
        detail = str(getattr(exc, "orig", None) or exc).splitlines()[0][:200] if str(exc) else ""
        err.print(f"enclave: internal error ({type(exc).__name__}: {detail}); "
                  "set ENCLAVE_DEBUG=1 for details", highlight=False)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
