"""Field names as the policy spells them (snake_case) and as GraphQL does (camelCase)."""

from __future__ import annotations


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)
