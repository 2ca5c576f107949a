"""Why a backup was refused, each reason with its own exit code for scripts.

    EnclaveError
    └── BackupError              1   a backup operation failed (no recipient, bad argument, ...)
        ├── BadSignature        10   the manifest's signature does not verify, or its signer is
        │                            not the appliance (or --signer) it is checked against
        ├── WrongIdentity       11   the identity given is not one the backup was encrypted to
        ├── Truncated           12   the file ends early: it was cut short or never finished
        ├── Tampered            13   a hash, size or count does not match the signed manifest,
        │                            or bytes were added, removed or reordered
        ├── TargetNotEmpty      14   restore target holds data and --force was not given
        └── VersionTooNew       15   made by a newer Enclave (format or schema revision)

Every error is refused before the restore target is touched; the message is one line.
"""

from __future__ import annotations

from security.errors import EnclaveError


class BackupError(EnclaveError):
    code = "BACKUP_FAILED"
    public = True
    exit_code = 1
    label = "failed"


class BadSignature(BackupError):
    code = "BACKUP_BAD_SIGNATURE"
    exit_code = 10
    label = "bad signature"


class WrongIdentity(BackupError):
    code = "BACKUP_WRONG_IDENTITY"
    exit_code = 11
    label = "wrong identity"


class Truncated(BackupError):
    code = "BACKUP_TRUNCATED"
    exit_code = 12
    label = "truncated"


class Tampered(BackupError):
    code = "BACKUP_TAMPERED"
    exit_code = 13
    label = "tampered"


class TargetNotEmpty(BackupError):
    code = "BACKUP_TARGET_NOT_EMPTY"
    exit_code = 14
    label = "target not empty"


class VersionTooNew(BackupError):
    code = "BACKUP_VERSION_TOO_NEW"
    exit_code = 15
    label = "version too new"


EXIT_CODES = {cls.__name__: cls.exit_code for cls in
              (BackupError, BadSignature, WrongIdentity, Truncated, Tampered, TargetNotEmpty,
               VersionTooNew)}
