"""Encrypted, signed, verifiable backup and restore (issue 4). See docs/backup.md.

A backup is one tar file: payload.age (age-encrypted, zstd-compressed tar of keys.json and
every table as JSON lines), MANIFEST.json and MANIFEST.sig (Ed25519 by the appliance).
"""

from backup.create import CreateResult, create_backup
from backup.errors import (
    EXIT_CODES,
    BackupError,
    BadSignature,
    Tampered,
    TargetNotEmpty,
    Truncated,
    VersionTooNew,
    WrongIdentity,
)
from backup.identity import Identities, load_identities, validate_recipient
from backup.manifest import Manifest, TrustAnchor, fingerprint
from backup.progress import NO_PROGRESS, Progress
from backup.restore import RestoreResult, restore_backup
from backup.retention import BackupInfo, PrunePlan, apply_prune, list_backups, plan_prune
from backup.verify import VerifyResult, appliance_anchor, verify_backup

__all__ = [
    "EXIT_CODES",
    "NO_PROGRESS",
    "BackupError",
    "BackupInfo",
    "BadSignature",
    "CreateResult",
    "Identities",
    "Manifest",
    "Progress",
    "PrunePlan",
    "RestoreResult",
    "Tampered",
    "TargetNotEmpty",
    "Truncated",
    "TrustAnchor",
    "VerifyResult",
    "VersionTooNew",
    "WrongIdentity",
    "appliance_anchor",
    "apply_prune",
    "create_backup",
    "fingerprint",
    "list_backups",
    "load_identities",
    "plan_prune",
    "restore_backup",
    "validate_recipient",
    "verify_backup",
]
