"""Who an operation runs for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    roles: tuple[str, ...]
    team: str | None = None
    #: "client" (OAuth2 client), "operator" (the local CLI).
    kind: str = "client"

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"
