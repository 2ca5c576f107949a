"""Helpers for the backup tests: recovery keys, seeding, table snapshots and forged files."""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
import zstandard
from conftest import operator
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pyrage import x25519
from sqlalchemy import Engine, select
from starlette.testclient import TestClient

from api.app import create_app
from backup import manifest as manifest_mod
from backup.archive import read_layout
from backup.recipients import add_recipient
from schema.context import unit_of_work
from schema.ops import accounts as account_ops
from schema.ops import contacts as contact_ops
from schema.runtime import Appliance
from storage.models import Base

TEAM = "east"
MANAGER = operator("sales_manager", team=TEAM, id="manager")
ADMIN = operator("admin", id="operator")
CONTACT_FIELDS = ("id firstName lastName title email phone address birthDate nationalId notes "
                  "account { id name }")


@dataclass(frozen=True)
class Officer:
    """The security officer's offline recovery key."""

    identity_file: Path
    recipient: str


def new_officer(directory: Path, name: str = "recovery.txt") -> Officer:
    identity = x25519.Identity.generate()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"# created: test\n# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return Officer(path, str(identity.to_public()))


def add_officer(appliance: Appliance, officer: Officer) -> None:
    with unit_of_work(appliance, ADMIN) as ctx:
        add_recipient(ctx, officer.recipient, label="security officer")


def seed(appliance: Appliance, count: int, *, start: int = 0) -> list[str]:
    """Accounts and contacts with every personal field, owned by team east."""
    with unit_of_work(appliance, MANAGER) as ctx:
        account = account_ops.create_account(ctx, {"name": f"Acme {start}",
                                                   "industry": "tools"}).id
        ids = [contact_ops.create_contact(ctx, contact_data(i, account)).id
               for i in range(start, start + count)]
    return ids


def contact_data(i: int, account_id: str | None = None) -> dict[str, Any]:
    return {"first_name": f"Ada{i}", "last_name": f"Lovelace {i}", "title": "Engineer",
            "email": f"ada{i}@example.com", "phone": f"+44 20 7946 {i:04d}",
            "address": f"{i} Analytical Street, London", "birth_date": "1990-12-10",
            "national_id": f"QQ{i:06d}C", "notes": f"note {i} " + "é" * 20,
            "account_id": account_id}


def erase(appliance: Appliance, contact_id: str) -> None:
    with unit_of_work(appliance, MANAGER) as ctx:
        contact_ops.delete_contact(ctx, contact_id)


def tables(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, typed (so SQLite and PostgreSQL compare), in primary-key order."""
    found: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(select(table).order_by(*table.primary_key.columns))
            found[table.name] = [tuple(row) for row in rows]
    return found


def read_contacts(appliance: Appliance, client_id: str, secret: str) -> dict[str, Any]:
    """Every contact with every field, read over GraphQL by a sales manager."""
    with TestClient(create_app(appliance), base_url="http://127.0.0.1") as http:
        token = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                          auth=(client_id, secret)).json()["access_token"]
        found: dict[str, Any] = {}
        after = None
        while True:
            response = http.post("/graphql", headers={"Authorization": f"Bearer {token}"}, json={
                "query": "query($a: String) { contacts(first: 100, after: $a) { edges { node { "
                         + CONTACT_FIELDS + " } } pageInfo { hasNextPage endCursor } } }",
                "variables": {"a": after}})
            body = response.json()
            assert "errors" not in body, body
            page = body["data"]["contacts"]
            found.update({e["node"]["id"]: e["node"] for e in page["edges"]})
            if not page["pageInfo"]["hasNextPage"]:
                return found
            after = page["pageInfo"]["endCursor"]


# -- forged and damaged files -------------------------------------------------------------------

def write_archive(path: Path, payload: bytes, manifest: bytes, signature: bytes) -> None:
    """An archive laid out as Enclave lays it out, made with the standard tarfile module."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in (("payload.age", payload), ("MANIFEST.json", manifest),
                           ("MANIFEST.sig", signature)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            archive.addfile(info, io.BytesIO(data))


def parts(path: Path) -> tuple[bytes, dict[str, Any], bytes]:
    layout = read_layout(path)
    with path.open("rb") as handle:
        handle.seek(layout.payload_offset)
        payload = handle.read(layout.payload_size)
    return payload, json.loads(layout.manifest), layout.signature


def resign(path: Path, out: Path, key: Ed25519PrivateKey, *, embed_key: bool,
           change: dict[str, Any] | None = None, payload: bytes | None = None) -> Path:
    """Rewrite the manifest (optionally with another payload) and sign it with `key`."""
    old_payload, document, _ = parts(path)
    document.update(change or {})
    if payload is not None:
        import hashlib
        document["payload"] = {**document["payload"], "size": len(payload),
                               "sha256": hashlib.sha256(payload).hexdigest()}
    if embed_key:
        document["signer"] = manifest_mod.signer_block(key, 1)
    manifest = (json.dumps(document, indent=2) + "\n").encode()
    write_archive(out, payload if payload is not None else old_payload, manifest,
                  key.sign(manifest))
    return out


def altered_payload(path: Path, officer: Officer, *, table: str) -> bytes:
    """The payload decrypted, one byte of a table's rows changed, compressed and re-encrypted
    to the same recipient: well-formed, but not what the manifest's table hash says."""
    payload, _, _ = parts(path)
    identity = x25519.Identity.from_str(officer.identity_file.read_text().splitlines()[-1])
    inner = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(pyrage.decrypt(payload,
                                                                                 [identity])))
    source = tarfile.open(fileobj=io.BytesIO(inner.read()), mode="r:")
    target_buffer = io.BytesIO()
    with tarfile.open(fileobj=target_buffer, mode="w", format=tarfile.GNU_FORMAT) as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.startswith(f"tables/{table}/") and data:
                data = data.replace(b"Lovelace", b"Lovelacf", 1)
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    compressed = zstandard.ZstdCompressor().compress(target_buffer.getvalue())
    return bytes(pyrage.encrypt(compressed, [x25519.Recipient.from_str(officer.recipient)]))


def flip(path: Path, out: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    out.write_bytes(bytes(data))
    return out
