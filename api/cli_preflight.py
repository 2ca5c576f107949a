"""`enclave preflight --profile P [--json]`: refuse a host that lacks what a profile requires.

The checks are in api/preflight.py (standard library only, so Ansible can run the same file on a
host without Enclave); the profiles ship as package data in api/hardware_profiles/ (the files
appliance/hardware/profiles points at).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from api import preflight
from security.errors import ConfigurationError

preflight_app = typer.Typer(help="Check this host against a hardware profile.",
                            invoke_without_command=True)

_STYLE = {preflight.PASS: "green", preflight.FAIL: "bold red", preflight.UNKNOWN: "yellow",
          preflight.SKIPPED: "dim"}


def profile_names() -> list[str]:
    folder = resources.files("api") / "hardware_profiles"
    return sorted(item.name.removesuffix(".yml") for item in folder.iterdir()
                  if item.name.endswith(".yml"))


def load_profile(name: str) -> dict[str, Any]:
    import yaml

    names = profile_names()
    if name not in names:
        raise ConfigurationError(f"unknown hardware profile {name!r} (profiles: {', '.join(names)})")
    text = (resources.files("api") / "hardware_profiles" / f"{name}.yml").read_text()
    profile = yaml.safe_load(text)
    if not isinstance(profile, dict):
        raise ConfigurationError(f"hardware profile {name!r} is not a mapping")
    return profile


@preflight_app.callback()
def preflight_command(
    profile: Annotated[str, typer.Option("--profile", help="Hardware profile: small, medium "
                                         "or large.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where the data will live; free "
                                           "space is measured there.")] = preflight.DEFAULT_DATA_DIR,
    skip: Annotated[list[str] | None, typer.Option("--skip", help="A check not to run "
                                                   "(repeatable).")] = None,
    allow_unknown: Annotated[list[str] | None, typer.Option(
        "--allow-unknown", help="A check whose answer may be 'cannot tell' (repeatable).")] = None,
    root: Annotated[Path, typer.Option("--root", hidden=True)] = Path("/"),
) -> None:
    """Inspect AES-NI, cores, memory, free disk, TPM 2.0, Debian release and clock sync; exit 1
    naming what is missing."""
    try:
        requirements = preflight.Requirements.from_profile(load_profile(profile))
        report = preflight.run_checks(requirements, preflight.Host(root=root), data_dir=data_dir,
                                      skip=skip or (), allow_unknown=allow_unknown or ())
    except preflight.ProfileError as exc:
        raise ConfigurationError(str(exc)) from None
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        table = Table(title=f"Pre-flight check: hardware profile {escape(profile)}",
                      title_justify="left")
        for column in ("check", "result", "found", "required", "what to do"):
            table.add_column(column, overflow="fold")
        for check in report.checks:
            style = _STYLE.get(check.status, "")
            # What the host reports is text, not markup (a "[...]" in it must print as is).
            table.add_row(escape(check.name), f"[{style}]{check.status.upper()}[/]",
                          escape(check.found), escape(check.required),
                          escape(check.hint) if check.status != preflight.PASS else "")
        console = Console(soft_wrap=False)
        console.print(table)
        console.print(f"[{'green' if report.ok else 'bold red'}]{escape(report.summary)}[/]",
                      highlight=False)
    if not report.ok:
        raise typer.Exit(preflight.EXIT_REFUSED)
