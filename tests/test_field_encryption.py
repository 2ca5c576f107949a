"""Attacks on field encryption: tampered, moved and shredded ciphertext, plaintext at rest,
and the blind indexes that make sealed fields searchable."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from schema.runtime import Appliance
from security import keys
from security.blindindex import blind_index, normalise
from security.fieldcrypt import (
    KEY_BYTES,
    FieldDecryptionError,
    key_version_of,
    new_key,
    open_at,
    open_sealed,
    place,
    prepare_key,
    seal,
)

# -- helpers ---------------------------------------------------------------------------------

CONTACT_FIELDS = "id lastName firstName email phone address birthDate nationalId notes"

CREATE = ("mutation($input: ContactInput!) { createContact(input: $input) { "
          + CONTACT_FIELDS + " } }")
READ = "query($id: ID!) { contact(id: $id) { " + CONTACT_FIELDS + " } }"


def create_contact(manager: Any, **fields: Any) -> dict[str, Any]:
    result = manager.gql(CREATE, {"input": fields})
    assert "errors" not in result, result
    return dict(result["data"]["createContact"])


def read_contact(manager: Any, contact_id: str) -> dict[str, Any]:
    return dict(manager.gql(READ, {"id": contact_id}))


def db_row(appliance: Appliance, sql: str, **params: Any) -> Any:
    with appliance.engine.connect() as connection:
        return connection.execute(text(sql), params).one_or_none()


def db_write(appliance: Appliance, sql: str, **params: Any) -> None:
    with appliance.engine.begin() as connection:
        result = connection.execute(text(sql), params)
        assert result.rowcount == 1


def codes(body: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in body.get("errors", [])]


# -- 1. the recipe itself --------------------------------------------------------------------

ROW = "0190a4b2-7c3d-7e4f-8a1b-2c3d4e5f6a7b"
OTHER_ROW = "0190a4b2-7c3d-7e4f-8a1b-2c3d4e5f6a7c"


@pytest.fixture
def key() -> bytes:
    return new_key()


def _seal(key: bytes, plaintext: str = "jane@example.com", **overrides: Any) -> bytes:
    place: dict[str, Any] = {"key_version": 3, "table": "contacts", "column": "email",
                             "row_id": ROW}
    place.update(overrides)
    return seal(key, plaintext=plaintext, **place)


def _open(key: bytes | None, blob: bytes, **overrides: Any) -> str:
    """Opens with `open_sealed`, and checks that `open_at` (the compiled path's form) gives
    the same value or the same opaque error."""
    where: dict[str, Any] = {"table": "contacts", "column": "email", "row_id": ROW}
    version = overrides.pop("version", 3)
    where.update(overrides)
    try:
        value = open_sealed(lambda v: key if v == version else None, blob=blob, **where)
    except FieldDecryptionError:
        with pytest.raises(FieldDecryptionError) as caught:
            _open_at(key, version, blob, where)
        assert caught.value.__cause__ is None
        raise
    assert _open_at(key, version, blob, where) == value
    return value


def _open_at(key: bytes | None, version: int, blob: bytes, where: dict[str, Any]) -> str:
    prepared = None if key is None else prepare_key(key)
    return open_at(lambda row_id, v: prepared if (row_id, v) == (where["row_id"], version)
                   else None, place(where["table"], where["column"]), where["row_id"], blob)


def test_round_trip_and_format(key: bytes) -> None:
    assert len(key) == KEY_BYTES == 32
    for value in ("jane@example.com", "", "Zoë Ångström 🔐", "x" * 10_000):
        blob = _seal(key, value)
        assert _open(key, blob) == value
        assert blob[0] == 1 and key_version_of(blob) == 3
        assert value.encode() not in blob or value == ""
        # header (5) + nonce (12) + ciphertext + GCM tag (16)
        assert len(blob) == 5 + 12 + len(value.encode()) + 16


def test_every_flipped_byte_is_refused(key: bytes) -> None:
    blob = _seal(key, "sensitive value")
    for position in range(len(blob)):
        for mask in (0x01, 0x80):
            altered = bytearray(blob)
            altered[position] ^= mask
            with pytest.raises(FieldDecryptionError) as caught:
                _open(key, bytes(altered))
            assert str(caught.value) == str(FieldDecryptionError())


def test_truncated_or_extended_blobs_are_refused(key: bytes) -> None:
    blob = _seal(key, "sensitive value")
    for length in range(len(blob)):
        with pytest.raises(FieldDecryptionError):
            _open(key, blob[:length])
    with pytest.raises(FieldDecryptionError):
        _open(key, blob + b"\x00")
    with pytest.raises(FieldDecryptionError):
        _open(key, b"")


@pytest.mark.parametrize("where", [
    {"table": "accounts"},
    {"table": "contacts\x00email"},
    {"column": "phone"},
    {"column": "email\x00"},
    {"row_id": OTHER_ROW},
    {"row_id": ROW.upper()},
])
def test_wrong_place_in_the_associated_data_is_refused(key: bytes, where: dict[str, str]) -> None:
    blob = _seal(key)
    assert _open(key, blob) == "jane@example.com"
    with pytest.raises(FieldDecryptionError):
        _open(key, blob, **where)


def test_relabelled_key_version_is_refused(key: bytes) -> None:
    blob = _seal(key)
    # The header says version 4, and the attacker hands the same key out for version 4.
    relabelled = bytes([1]) + (4).to_bytes(4, "big") + blob[5:]
    assert key_version_of(relabelled) == 4
    with pytest.raises(FieldDecryptionError):
        _open(key, relabelled, version=4)
    # A different format byte is refused before any key is asked for.
    with pytest.raises(FieldDecryptionError):
        _open(key, bytes([2]) + blob[1:])


def test_wrong_or_missing_key_is_refused(key: bytes) -> None:
    blob = _seal(key)
    with pytest.raises(FieldDecryptionError):
        _open(new_key(), blob)
    with pytest.raises(FieldDecryptionError):
        _open(None, blob)
    with pytest.raises(FieldDecryptionError):
        _open(key, blob, version=2)  # the keyring has no key for the blob's version


def test_one_opaque_error_for_every_failure(key: bytes) -> None:
    blob = _seal(key)
    messages = set()
    for attempt in (lambda: _open(new_key(), blob), lambda: _open(key, blob[:10]),
                    lambda: _open(key, blob, column="phone"), lambda: _open(None, blob),
                    lambda: _open(key, blob[:-1] + bytes([blob[-1] ^ 1]))):
        with pytest.raises(FieldDecryptionError) as caught:
            attempt()
        # Nothing underneath leaks through the exception chain either.
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None or caught.value.__suppress_context__
        messages.add(str(caught.value))
    assert len(messages) == 1


def test_two_seals_of_the_same_value_differ(key: bytes) -> None:
    blobs = {_seal(key, "same value") for _ in range(50)}
    assert len(blobs) == 50
    nonces = {blob[5:17] for blob in blobs}
    assert len(nonces) == 50
    assert all(_open(key, blob) == "same value" for blob in blobs)


# -- 2. ciphertext moved inside the database -------------------------------------------------

def test_email_copied_to_another_contact_does_not_open(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    a = create_contact(manager, lastName="Alpha", email="alpha@example.com", phone="+1 555 0100")
    b = create_contact(manager, lastName="Beta", email="beta@example.com", phone="+1 555 0199",
                       notes="beta's notes")
    a_email = db_row(appliance, "SELECT email FROM contacts WHERE id = :id", id=a["id"])[0]
    db_write(appliance, "UPDATE contacts SET email = :blob WHERE id = :id",
             blob=bytes(a_email), id=b["id"])

    body = read_contact(manager, b["id"])
    assert codes(body) == ["DATA_INTEGRITY"], body
    error = body["errors"][0]
    assert error["path"] == ["contact", "email"]
    assert "alpha@example.com" not in str(body)
    contact = body["data"]["contact"]
    assert contact["email"] is None
    assert contact["lastName"] == "Beta"
    assert contact["phone"] == "+1 555 0199"
    assert contact["notes"] == "beta's notes"

    # The source row is untouched and still reads.
    source = read_contact(manager, a["id"])
    assert "errors" not in source, source
    assert source["data"]["contact"]["email"] == "alpha@example.com"

    # A list read reports the one bad field and serves everything else.
    listed = manager.gql("{ contacts { edges { node { id lastName email } } } }")
    assert codes(listed) == ["DATA_INTEGRITY"], listed
    nodes = {n["node"]["id"]: n["node"] for n in listed["data"]["contacts"]["edges"]}
    assert nodes[a["id"]]["email"] == "alpha@example.com"
    assert nodes[b["id"]] == {"id": b["id"], "lastName": "Beta", "email": None}


def test_email_copied_into_the_phone_column_does_not_open(caller: Any,
                                                          appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    a = create_contact(manager, lastName="Alpha", email="alpha@example.com", phone="+1 555 0100")
    a_email = db_row(appliance, "SELECT email FROM contacts WHERE id = :id", id=a["id"])[0]
    db_write(appliance, "UPDATE contacts SET phone = :blob WHERE id = :id",
             blob=bytes(a_email), id=a["id"])

    body = read_contact(manager, a["id"])
    assert codes(body) == ["DATA_INTEGRITY"], body
    assert body["errors"][0]["path"] == ["contact", "phone"]
    contact = body["data"]["contact"]
    assert contact["phone"] is None
    assert contact["email"] == "alpha@example.com"
    assert contact["lastName"] == "Alpha"


def test_an_update_does_not_launder_a_moved_ciphertext(caller: Any, appliance: Appliance) -> None:
    """Re-sealing a row on update must not re-bind a ciphertext that was moved into it."""
    manager = caller("sales_manager", team="east")
    a = create_contact(manager, lastName="Alpha", email="alpha@example.com")
    b = create_contact(manager, lastName="Beta", email="beta@example.com")
    a_email = db_row(appliance, "SELECT email FROM contacts WHERE id = :id", id=a["id"])[0]
    db_write(appliance, "UPDATE contacts SET email = :blob WHERE id = :id",
             blob=bytes(a_email), id=b["id"])

    updated = manager.gql('mutation($id: ID!) { updateContact(id: $id, input: {phone: "+1 555 '
                          '0142"}) { id email } }', {"id": b["id"]})
    assert "DATA_INTEGRITY" in codes(updated), updated
    assert "INTERNAL" not in codes(updated)
    assert "alpha@example.com" not in str(updated)
    assert db_row(appliance, "SELECT email FROM contacts WHERE id = :id",
                  id=b["id"])[0] == a_email  # nothing was re-sealed
    assert read_contact(manager, b["id"])["data"]["contact"]["email"] is None


def test_a_subject_key_moved_to_another_contact_does_not_open_it(caller: Any,
                                                                   appliance: Appliance) -> None:
    """Both keys were opened a moment ago (and are kept opened for reuse): the reuse is looked
    up by subject and wrapped key, so Alpha's wrapped key under Beta's id opens nothing."""
    manager = caller("sales_manager", team="east")
    a = create_contact(manager, lastName="Alpha", email="alpha@example.com")
    b = create_contact(manager, lastName="Beta", email="beta@example.com")
    for contact, email in ((a, "alpha@example.com"), (b, "beta@example.com")):
        assert read_contact(manager, contact["id"])["data"]["contact"]["email"] == email
        assert appliance.keyring.holds_opened_key(contact["id"])
    a_key = db_row(appliance, "SELECT wrapped FROM subject_keys WHERE subject_id = :id",
                   id=a["id"])[0]
    db_write(appliance, "UPDATE subject_keys SET wrapped = :blob WHERE subject_id = :id",
             blob=bytes(a_key), id=b["id"])
    # Alpha's ciphertext moved along too: still nothing opens under Beta's id.
    a_email = db_row(appliance, "SELECT email FROM contacts WHERE id = :id", id=a["id"])[0]
    db_write(appliance, "UPDATE contacts SET email = :blob WHERE id = :id",
             blob=bytes(a_email), id=b["id"])

    one = read_contact(manager, b["id"])
    assert codes(one) == ["DATA_INTEGRITY"], one
    assert one["data"]["contact"]["email"] is None and "@example.com" not in str(one)
    page = manager.gql("query { contacts(first: 10) { edges { node { id email } } } }")
    assert codes(page) == ["DATA_INTEGRITY"], page
    emails = {edge["node"]["id"]: edge["node"]["email"]
              for edge in page["data"]["contacts"]["edges"]}
    assert emails == {a["id"]: "alpha@example.com", b["id"]: None}


def test_altered_ciphertext_in_the_database_gives_data_integrity(caller: Any,
                                                                 appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    a = create_contact(manager, lastName="Alpha", nationalId="XY-1234", notes="n")
    blob = bytearray(db_row(appliance, "SELECT national_id FROM contacts WHERE id = :id",
                            id=a["id"])[0])
    blob[-3] ^= 0x01
    db_write(appliance, "UPDATE contacts SET national_id = :blob WHERE id = :id",
             blob=bytes(blob), id=a["id"])
    body = read_contact(manager, a["id"])
    assert codes(body) == ["DATA_INTEGRITY"], body
    assert body["data"]["contact"]["nationalId"] is None
    assert body["data"]["contact"]["notes"] == "n"


# -- 3. no plaintext at rest -----------------------------------------------------------------

SECRETS = {
    "email": "Quokka.Zanzibar7@Example.ORG",
    "phone": "+44 (20) 7946-0958",
    "nationalId": "QZ-731-558-X",
    "address": "17 Wombatstrasse, Flurbelheim",
    "notes": "prefers contact by carrier pigeon xylophone",
    "birthDate": "1937-02-19",
}


def _forms(value: str) -> set[str]:
    forms = {value, value.lower(), value.upper(), value.strip()}
    for kind in ("email", "phone"):
        try:
            forms.add(normalise(kind, value))
        except ValueError:  # pragma: no cover - both kinds accept any text
            pass
    return {f for f in forms if len(f) >= 6}


def _needles(values: dict[str, str]) -> dict[bytes, str]:
    needles: dict[bytes, str] = {}
    for name, value in values.items():
        for form in _forms(value):
            raw = form.encode()
            needles[raw] = name
            needles[raw.hex().encode()] = name  # how pg_dump writes bytea
            needles[form.encode("utf-16-le")] = name
    # Distinctive words of the longer values, alone.
    for name in ("address", "notes"):
        for word in values[name].split():
            if len(word) >= 8:
                needles[word.encode()] = name
                needles[word.lower().encode()] = name
    return needles


def _sqlite_files(database: Path) -> bytes:
    files = sorted(database.parent.glob(database.name + "*"))
    assert database in files
    return b"".join(path.read_bytes() for path in files)


def _database_bytes(appliance: Appliance, *, live: bool = True) -> bytes:
    """Every byte the database keeps. SQLite: the file, -wal and -shm while the appliance runs
    (the log holds every page version written since the last checkpoint) when `live`, then
    again once every connection is closed and the log is checkpointed into the file.
    PostgreSQL: what the real `pg_dump` writes."""
    url = appliance.settings.resolved_database_url
    if url.startswith("sqlite"):
        database = Path(url.removeprefix("sqlite:///"))
        running = _sqlite_files(database) if live else b""
        appliance.engine.dispose()
        return running + _sqlite_files(database)
    assert url.startswith("postgresql+psycopg://")
    plain_url = "postgresql://" + url.split("://", 1)[1]
    dump = subprocess.run(["pg_dump", "--data-only", "--no-owner", "--dbname", plain_url],
                          capture_output=True, check=True, timeout=60,
                          env={**os.environ, "PGCONNECT_TIMEOUT": "10"})
    assert b"COPY public.contacts" in dump.stdout
    return dump.stdout


def test_no_plaintext_at_rest(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    ids = []
    for i in range(3):
        values = {k: v for k, v in SECRETS.items()}
        values["email"] = f"{i}{SECRETS['email']}"
        created = create_contact(manager, lastName=f"Plaintextcontrol{i}", **values)
        ids.append(created["id"])
    # Another update moves the sealed fields again (and leaves old row versions behind).
    updated = manager.gql('mutation($id: ID!) { updateContact(id: $id, input: '
                          '{title: "Chief Quokka"}) { id } }', {"id": ids[0]})
    assert "errors" not in updated, updated

    # Through the API, the values are all there (so the scan below looks for the right things).
    read = read_contact(manager, ids[1])
    assert "errors" not in read, read
    contact = read["data"]["contact"]
    for name, value in SECRETS.items():
        expected = f"1{value}" if name == "email" else value
        assert contact[name] == expected

    dumped = _database_bytes(appliance)
    # Unsealed columns are in the clear: proof that the scan sees the rows.
    assert b"Plaintextcontrol1" in dumped
    assert b"Chief Quokka" in dumped
    found = sorted({name for needle, name in _needles(SECRETS).items() if needle in dumped})
    assert found == [], f"plaintext of {found} found at rest"


# -- 4. blind index search -------------------------------------------------------------------

SEARCH = ("query($f: ContactFilter) { contacts(filter: $f) { edges { node { id email phone } } } }")


def _found(manager: Any, **filter_: str) -> list[str]:
    body = manager.gql(SEARCH, {"f": filter_})
    assert "errors" not in body, body
    return [edge["node"]["id"] for edge in body["data"]["contacts"]["edges"]]


def test_blind_index_finds_normalised_email_and_phone(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    target = create_contact(manager, lastName="Mixed", email="mixed@example.com",
                            phone="+1 555 010 0123")
    other = create_contact(manager, lastName="Other", email="mixed@example.net",
                           phone="+1 555 010 0124")

    assert _found(manager, email="MiXeD@Example.com ") == [target["id"]]
    assert _found(manager, email="mixed@example.com") == [target["id"]]
    assert _found(manager, email="mixed@example.net") == [other["id"]]
    assert _found(manager, email="mixed@example.co") == []
    assert _found(manager, phone="+1 (555) 010-0123") == [target["id"]]
    assert _found(manager, phone="001 555 010 0123") == [target["id"]]
    assert _found(manager, phone="+1 555 010 0124") == [other["id"]]
    assert _found(manager, phone="+1 555 010 0125") == []
    assert _found(manager, email="MIXED@EXAMPLE.COM", phone="+15550100123") == [target["id"]]
    assert _found(manager, email="mixed@example.com", phone="+1 555 010 0124") == []

    # Another team's manager finds nothing, even with the exact value.
    stranger = caller("sales_manager", team="west")
    assert _found(stranger, email="mixed@example.com") == []

    row = db_row(appliance, "SELECT email_bidx, phone_bidx FROM contacts WHERE id = :id",
                 id=target["id"])
    email_bidx, phone_bidx = row
    index_key = appliance.keyring.key(keys.BLIND_INDEX)
    assert index_key is not None
    for bidx, kind, value in ((email_bidx, "email", "mixed@example.com"),
                              (phone_bidx, "phone", "+15550100123")):
        assert len(bidx) == 64 and int(bidx, 16) >= 0
        assert value not in bidx and value.split("@")[0] not in bidx
        # Keyed: not an unkeyed hash of the value an attacker could compute.
        assert bidx not in {hashlib.sha256(value.encode()).hexdigest(),
                            hashlib.sha256(f"{kind}\x00{value}".encode()).hexdigest()}
        assert bidx == blind_index(index_key, kind, value)
        assert bidx != blind_index(new_key(), kind, value)
    # The index key is not the field key, and email and phone indexes are domain-separated.
    assert index_key != appliance.keyring.key(keys.FIELD)
    assert blind_index(index_key, "email", "+15550100123") != blind_index(
        index_key, "phone", "+15550100123")


# -- 5. crypto-shredding ---------------------------------------------------------------------

def _every_key(appliance: Appliance) -> list[bytes]:
    """Every data key the keyring holds, and every subject key still in the database."""
    ring = appliance.keyring
    found = [ring.key(purpose, version)
             for purpose in keys.PURPOSES for version in ring.versions(purpose)]
    with appliance.sessions() as session:
        subject_ids = [r[0] for r in session.execute(text("SELECT subject_id FROM subject_keys"))]
        found += list(ring.load_subject_keys(session, subject_ids).values())
    return [k for k in found if k is not None]


def test_deleting_a_contact_shreds_its_sealed_fields(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    victim = create_contact(manager, lastName="Shred", email="shred@example.com",
                            nationalId="SH-0001", phone="+1 555 0177")
    bystander = create_contact(manager, lastName="Keep", email="keep@example.com")
    row = db_row(appliance, "SELECT email, national_id, phone, key_version FROM contacts "
                            "WHERE id = :id", id=victim["id"])
    copies = {"email": bytes(row[0]), "national_id": bytes(row[1]), "phone": bytes(row[2])}
    version = row[3]
    wrapped_subject_key = bytes(db_row(
        appliance, "SELECT wrapped FROM subject_keys WHERE subject_id = :id", id=victim["id"])[0])

    # Before deletion the copy opens with the subject's key (so the check below can fail).
    with appliance.sessions() as session:
        subject = appliance.keyring.load_subject_keys(session, [victim["id"]])
    assert set(subject) == {(victim["id"], version)}
    assert appliance.keyring.holds_opened_key(victim["id"])  # opened keys are reused a while
    assert open_sealed(lambda v: subject.get((victim["id"], v)), table="contacts",
                       column="email", row_id=victim["id"],
                       blob=copies["email"]) == "shred@example.com"

    deleted = manager.gql("mutation($id: ID!) { deleteContact(id: $id) { id } }",
                          {"id": victim["id"]})
    assert "errors" not in deleted, deleted
    assert deleted["data"]["deleteContact"]["id"] == victim["id"]

    assert db_row(appliance, "SELECT count(*) FROM subject_keys WHERE subject_id = :id",
                  id=victim["id"])[0] == 0
    # Nor does the process keep the opened key in memory.
    assert not appliance.keyring.holds_opened_key(victim["id"])
    assert appliance.keyring.holds_opened_key(bystander["id"])
    assert db_row(appliance, "SELECT count(*) FROM contacts WHERE id = :id",
                  id=victim["id"])[0] == 0
    # The bystander keeps their key and still reads.
    assert db_row(appliance, "SELECT count(*) FROM subject_keys WHERE subject_id = :id",
                  id=bystander["id"])[0] == 1
    assert read_contact(manager, bystander["id"])["data"]["contact"]["email"] == "keep@example.com"

    candidates = _every_key(appliance)
    assert len(candidates) >= len(keys.PURPOSES) + 1
    for column, blob in copies.items():
        for candidate in candidates:
            with pytest.raises(FieldDecryptionError):
                open_sealed(lambda v, k=candidate: k, table="contacts", column=column,
                            row_id=victim["id"], blob=blob)

    # The contact is gone for the API too.
    gone = read_contact(manager, victim["id"])
    assert codes(gone) == ["NOT_FOUND"], gone

    if appliance.settings.resolved_database_url.startswith("sqlite"):
        # secure_delete: once the log is checkpointed (here: every connection closed), neither
        # the wrapped subject key nor the ciphertext lingers in the file's free space. (Until
        # that checkpoint the -wal file of a running appliance still holds both.)
        at_rest = _database_bytes(appliance, live=False)
        assert b"Keep" in at_rest  # the scan sees live rows
        assert wrapped_subject_key not in at_rest
        for blob in copies.values():
            assert blob not in at_rest
