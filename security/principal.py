"""Who an operation runs for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Principal:
    id: str
    name: str
    roles: tuple[str, ...]
    team: str | None = None
    #: "client" (OAuth2 client), "user" (a signed-in person), "operator" (the local CLI).
    kind: str = "client"
    #: For a person: the sign-in session their token came from (ending it ends the token).
    session_id: str | None = None
    #: For a person: the web client (application) their token was issued to.
    client_id: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"
