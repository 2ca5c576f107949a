"""The key-encryption key (KEK): lives in a file in the data folder, never in the database.

The file is sealed by a passphrase (scrypt, then AES-256-GCM). Only the explicit development mode
may keep it unsealed. Files and the folder are created owner-only (0600 / 0700).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from security.config import Secret
from security.errors import ConfigurationError
from security.fieldcrypt import new_key

_FORMAT = "enclave-kek/1"
_SCRYPT_N = 2**15
_AAD = b"enclave/kek/v1"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode())


def _derive(passphrase: Secret, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.reveal().encode())


def write_private_file(path: Path, data: str) -> None:
    """Create `path` with mode 0600 from the start (never world-readable, even briefly)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(data)


def create_kek(path: Path, passphrase: Secret | None, *, dev_mode: bool) -> bytes:
    if passphrase is None and not dev_mode:
        raise ConfigurationError(
            "set ENCLAVE_KEY_PASSPHRASE to seal the key-encryption key "
            "(only development mode may keep it unsealed)"
        )
    kek = new_key()
    document: dict[str, object]
    if passphrase is None:
        document = {"format": _FORMAT, "sealing": "none", "key": _b64(kek)}
    else:
        salt, nonce = os.urandom(16), os.urandom(12)
        sealing_key = _derive(passphrase, salt, _SCRYPT_N, 8, 1)
        document = {
            "format": _FORMAT, "sealing": "scrypt", "n": _SCRYPT_N, "r": 8, "p": 1,
            "salt": _b64(salt), "nonce": _b64(nonce),
            "ciphertext": _b64(AESGCM(sealing_key).encrypt(nonce, kek, _AAD)),
        }
    write_private_file(path, json.dumps(document, indent=2) + "\n")
    return kek


def load_kek(path: Path, passphrase: Secret | None, *, dev_mode: bool) -> bytes:
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigurationError(f"no key-encryption key at {path}; run `enclave init`") from None
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read the key-encryption key at {path}: {exc}") from None
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(f"{path} is readable by others; run `chmod 600 {path}`")
    if not isinstance(document, dict) or document.get("format") != _FORMAT:
        raise ConfigurationError(f"{path} is not an Enclave key file")
    if document.get("sealing") not in ("none", "scrypt"):
        raise ConfigurationError(f"{path} uses an unknown sealing {document.get('sealing')!r}")
    if document.get("sealing") == "none" and not dev_mode:
        raise ConfigurationError(
            f"{path} holds an unsealed key-encryption key, allowed in development mode only"
        )
    if document.get("sealing") == "scrypt" and passphrase is None:
        raise ConfigurationError(
            "the key-encryption key is sealed: set ENCLAVE_KEY_PASSPHRASE to unseal it"
        )
    try:
        if document["sealing"] == "none":
            kek = _unb64(document["key"])
        else:
            assert passphrase is not None
            sealing_key = _derive(
                passphrase, _unb64(document["salt"]), document["n"], document["r"], document["p"]
            )
            kek = AESGCM(sealing_key).decrypt(
                _unb64(document["nonce"]), _unb64(document["ciphertext"]), _AAD
            )
    except InvalidTag:
        raise ConfigurationError("wrong ENCLAVE_KEY_PASSPHRASE for the key-encryption key") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # binascii.Error too
        raise ConfigurationError(
            f"{path} is damaged ({type(exc).__name__}); restore it from your key backup"
        ) from None
    if len(kek) != 32:
        raise ConfigurationError(f"{path} is damaged (the key is not 32 bytes)")
    return kek
