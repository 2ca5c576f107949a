"""age recipients (public, configured on the appliance) and identities (secret, held offline).

Only native age X25519 keys are accepted: `age1...` recipients and the secret-key lines that
`age-keygen` writes as identities.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyrage
from pyrage import x25519

from backup.errors import BackupError


def validate_recipient(text: str) -> str:
    value = text.strip()
    if not value.startswith("age1"):
        raise BackupError(f"{value[:20]!r} is not an age recipient (age1...); make one with "
                          "`age-keygen -o recovery.txt` on an offline machine")
    try:
        x25519.Recipient.from_str(value)
    except pyrage.RecipientError as exc:
        raise BackupError(f"{value[:20]}... is not a valid age recipient: {exc}") from None
    return value


@dataclass(frozen=True)
class Identities:
    """The secret keys read from an identity file, and the recipients they answer to."""

    path: Path
    identities: tuple[x25519.Identity, ...]
    recipients: frozenset[str]

    def __repr__(self) -> str:
        return f"Identities({self.path}, {len(self.identities)} key(s))"


def load_identities(path: Path) -> Identities:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BackupError(f"no identity file at {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupError(f"cannot read the identity file {path}: {type(exc).__name__}") from None
    found: list[x25519.Identity] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            found.append(x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise BackupError(f"{path} line {number} is not an age identity "
                              "(a secret-key line as age-keygen writes it)") from None
    if not found:
        raise BackupError(f"{path} holds no age identity (the file age-keygen writes)")
    return Identities(path, tuple(found), frozenset(str(i.to_public()) for i in found))
