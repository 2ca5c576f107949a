"""`enclave users ...` (people's accounts) and `enclave web-clients ...` (applications that sign
people in). Admin operations from `schema.ops.users` and `schema.ops.web_clients`, audited.

Passwords are never arguments (they would land in shell history and `ps`): `users create` and
`users set-password` prompt twice, or read one line from standard input with `--password-stdin`.
A TOTP secret is printed once, as the otpauth:// URI an authenticator app takes, and never again.
"""

from __future__ import annotations

import getpass
import json
import sys
from types import ModuleType
from typing import Annotated, Any

import typer

from security.errors import BadUserInput

users_app = typer.Typer(help="People's accounts (sign-in with password and TOTP).",
                        no_args_is_help=True)
web_clients_app = typer.Typer(help="Applications that sign people in (authorization code "
                              "flow with PKCE).", no_args_is_help=True)

Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
PasswordStdin = Annotated[bool, typer.Option(
    "--password-stdin", help="Read the password from one line of standard input.")]


def _cli() -> ModuleType:
    from api import cli
    return cli


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise BadUserInput("no password on standard input", field="password")
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise BadUserInput("no terminal to ask for the password on; use --password-stdin",
                           field="password")
    first = getpass.getpass("Password: ")
    if getpass.getpass("Password again: ") != first:
        raise BadUserInput("the two passwords differ", field="password")
    return first


def _print_enrolment(email: str, secret: str, uri: str) -> None:
    out = _cli().out
    out.print(f"TOTP for {email} (shown once; add it to an authenticator app now):",
              highlight=False)
    out.print(f"  secret: {secret}\n  uri:    {uri}", highlight=False, soft_wrap=True)


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Their email address (their sign-in name).")],
    role: Annotated[list[str], typer.Option(help="Role to grant (repeatable).")],
    team: Annotated[str | None, typer.Option(help="Their team.")] = None,
    password_stdin: PasswordStdin = False,
    no_password: Annotated[bool, typer.Option(
        "--no-password", help="No local password: they sign in through the organisation's "
        "provider only.")] = False,
    totp: Annotated[bool, typer.Option(
        "--totp", help="Enrol TOTP even if their roles do not require it (admin, "
        "security_officer and privacy_officer always get it).")] = False,
    as_json: Json = False,
) -> None:
    """Create a person's account."""
    from schema.context import unit_of_work
    from schema.ops import users
    cli = _cli()
    if no_password and password_stdin:
        raise BadUserInput("--no-password and --password-stdin contradict each other: give one",
                           field="password")
    password = None if no_password else _read_password(password_stdin)
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        made = users.create_user(ctx, email=email, roles=role, team=team, password=password,
                                 with_totp=totp)
        row = _row(made.user)
    enrolment = made.totp
    if as_json:
        print(json.dumps({**row, "totp_secret": enrolment.secret if enrolment else None,
                          "totp_uri": enrolment.uri if enrolment else None}))
        return
    cli.out.print(f"created {row['email']} ({', '.join(row['roles'])}; team "
                  f"{row['team'] or '-'}), id {row['id']}", highlight=False)
    if enrolment:
        _print_enrolment(row["email"], enrolment.secret, enrolment.uri)


def _row(user: Any) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "roles": list(user.roles), "team": user.team,
            "totp": user.totp_secret is not None, "password": user.password_hash is not None,
            "created_at": user.created_at.isoformat(),
            "last_signin_at": user.last_signin_at.isoformat() if user.last_signin_at else None,
            "locked_until": user.locked_until.isoformat() if user.locked_until else None,
            "disabled_at": user.disabled_at.isoformat() if user.disabled_at else None}


@users_app.command("list")
def users_list(as_json: Json = False) -> None:
    """List people's accounts (never their secrets)."""
    from schema.context import unit_of_work
    from schema.ops import users
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        rows = [_row(u) for u in users.list_users(ctx)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        state = "disabled" if row["disabled_at"] else \
            "locked" if row["locked_until"] else "active"
        cli.out.print(f"{row['email']:<32} {','.join(row['roles']):<28} {row['team'] or '-':<12} "
                      f"{'totp' if row['totp'] else '-':<5} {state}", highlight=False)


@users_app.command("disable")
def users_disable(email: str) -> None:
    """Disable an account: sign-in refused, sessions and access tokens end at once."""
    from schema.context import unit_of_work
    from schema.ops import users
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        users.disable_user(ctx, email)
    cli.out.print(f"disabled {users.normalise_email(email)}", highlight=False)


@users_app.command("reset-totp")
def users_reset_totp(email: str, as_json: Json = False) -> None:
    """Give a person a new TOTP secret (shown once); the old one stops working."""
    from schema.context import unit_of_work
    from schema.ops import users
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        enrolment = users.reset_totp(ctx, email)
    clean = users.normalise_email(email)
    if as_json:
        print(json.dumps({"email": clean, "totp_secret": enrolment.secret,
                          "totp_uri": enrolment.uri}))
        return
    _print_enrolment(clean, enrolment.secret, enrolment.uri)


@users_app.command("set-password")
def users_set_password(email: str, password_stdin: PasswordStdin = False) -> None:
    """Set a person's password; clears a lock-out and ends their sessions."""
    from schema.context import unit_of_work
    from schema.ops import users
    cli = _cli()
    password = _read_password(password_stdin)
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        users.set_password(ctx, email, password)
    cli.out.print(f"password set for {users.normalise_email(email)}", highlight=False)


@web_clients_app.command("create")
def web_clients_create(
    name: Annotated[str, typer.Option(help="A name for the application (shown when signing "
                                      "in).")],
    redirect_uri: Annotated[list[str], typer.Option(
        "--redirect-uri", help="Exact redirect URI (repeatable; https, or http on loopback).")],
    public: Annotated[bool, typer.Option(
        "--public", help="A public client (no secret; PKCE alone), e.g. a single-page "
        "app.")] = False,
    as_json: Json = False,
) -> None:
    """Register an application that signs people in; a confidential one's secret is printed
    once."""
    from schema.context import unit_of_work
    from schema.ops import web_clients
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        issued = web_clients.create_web_client(ctx, name=name, redirect_uris=redirect_uri,
                                               public=public)
        client_id, uris = issued.client.id, list(issued.client.redirect_uris)
    if as_json:
        print(json.dumps({"client_id": client_id, "client_secret": issued.secret,
                          "redirect_uris": uris, "public": public}))
        return
    cli.out.print(f"client_id:     {client_id}", highlight=False)
    if issued.secret:
        cli.out.print(f"client_secret: {issued.secret}\nThe secret is shown once; store it "
                      "now.", highlight=False)
    cli.out.print(f"redirect URIs: {', '.join(uris)}", highlight=False)


@web_clients_app.command("list")
def web_clients_list(as_json: Json = False) -> None:
    """List web clients (never their secrets)."""
    from schema.context import unit_of_work
    from schema.ops import web_clients
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        rows: list[dict[str, Any]] = [{"client_id": c.id, "name": c.name,
                                       "redirect_uris": list(c.redirect_uris),
                 "public": c.secret_hash is None,
                 "revoked_at": c.revoked_at.isoformat() if c.revoked_at else None}
                for c in web_clients.list_web_clients(ctx)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        cli.out.print(f"{row['client_id']}  {row['name']:<20} "
                      f"{'public' if row['public'] else 'confidential':<13} "
                      f"{'revoked' if row['revoked_at'] else 'active':<8} "
                      f"{' '.join(row['redirect_uris'])}", highlight=False)


@web_clients_app.command("revoke")
def web_clients_revoke(client_id: str) -> None:
    """Revoke a web client: it can no longer start sign-ins or redeem codes."""
    from schema.context import unit_of_work
    from schema.ops import web_clients
    cli = _cli()
    appliance = cli._open()
    with unit_of_work(appliance, cli._operator("admin")) as ctx:
        web_clients.revoke_web_client(ctx, client_id)
    cli.out.print(f"revoked {client_id}", highlight=False)
