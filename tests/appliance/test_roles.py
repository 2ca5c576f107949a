"""The roles keep the house rules (notes/style.md): standard folders, every variable prefixed with
its role's name and declared with type, default and description in meta/argument_specs.yml,
full module names, a control id or role prefix in every task name, validate: on configuration
templates. Static, rootless: part of `make test`; `make appliance-test` runs them for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "appliance" / "ansible" / "roles"
NAMES = sorted(p.name for p in ROLES.iterdir() if p.is_dir())
SITE = ROLES.parent / "site.yml"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def tasks(role: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items or []:
            found.append(item)
            walk(item.get("block", []))
    for name in ("tasks", "handlers"):
        if (ROLES / role / name / "main.yml").exists():
            walk(load(ROLES / role / name / "main.yml"))
    return found


def test_site_runs_every_role_with_the_preflight_first() -> None:
    roles = [entry["role"] for entry in load(SITE)[0]["roles"]]
    assert roles == ["preflight", "base", "hardening", "postgresql", "enclave", "tls", "backup",
                     "integrity"]
    assert sorted(roles) == NAMES


@pytest.mark.parametrize("role", NAMES)
def test_every_variable_is_prefixed_and_declared(role: str) -> None:
    spec = load(ROLES / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    defaults = load(ROLES / role / "defaults" / "main.yml")
    assert set(spec) == set(defaults), set(spec) ^ set(defaults)
    for name, option in spec.items():
        assert name.startswith(f"{role}_"), name
        assert {"type", "default", "description"} <= set(option), name
        assert option["default"] == defaults[name], name
    internal = load(ROLES / role / "vars" / "main.yml") if (ROLES / role / "vars").exists() else {}
    assert all(name.startswith(f"{role}_") for name in internal or {}), role


@pytest.mark.parametrize("role", NAMES)
def test_tasks_use_full_module_names_and_templates_are_validated(role: str) -> None:
    keywords = {"name", "when", "loop", "loop_control", "register", "notify", "changed_when",
                "failed_when", "no_log", "vars", "block", "tags", "become", "listen"}
    for task in tasks(role):
        assert task.get("name"), task
        modules = [key for key in task if key not in keywords]
        if "block" in task:
            continue
        assert len(modules) == 1 and modules[0].count(".") == 2, (task["name"], modules)
        module, args = modules[0], task[modules[0]]
        if module in ("ansible.builtin.template",) and str(args.get("dest", "")).startswith("/etc/"):
            unvalidated = {"/etc/apt/sources.list", "/etc/issue", "/etc/issue.net"}
            assert "validate" in args or args["dest"] in unvalidated \
                or args["dest"].startswith("{{ item"), (role, task["name"])


def _unit(role: str, template: str, **overrides: Any) -> list[str]:
    """A unit file as the role renders it, with the role's defaults and `overrides`."""
    import jinja2

    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLES / role / "templates"),
                                     undefined=jinja2.ChainableUndefined)
    variables = {**load(ROLES / role / "defaults" / "main.yml"), **overrides}
    return environment.get_template(template).render(**variables).splitlines()


@pytest.mark.parametrize("template, networks", [
    ("enclave.service.j2", "enclave_outbound_networks"),
    ("enclave-webhooks.service.j2", "enclave_webhook_networks"),
])
def test_units_reach_loopback_only_unless_networks_are_named(template: str,
                                                             networks: str) -> None:
    def allowed(lines: list[str]) -> list[str]:
        assert "IPAddressDeny=any" in lines
        return [line for line in lines if line.startswith("IPAddressAllow=")]

    assert allowed(_unit("enclave", template)) == ["IPAddressAllow=localhost"]
    named = allowed(_unit("enclave", template, **{networks: ["10.20.0.15", "10.30.0.0/24"]}))
    assert named == ["IPAddressAllow=localhost", "IPAddressAllow=10.20.0.15",
                     "IPAddressAllow=10.30.0.0/24"]
