"""Attacks on the keys: the sealed key-encryption key, start-up, rotation and re-encryption."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import operator
from sqlalchemy import func, select, text
from starlette.testclient import TestClient

from api.app import create_app
from schema.context import unit_of_work
from schema.ops import keys as key_ops
from schema.runtime import Appliance, initialise
from security import keys
from security.config import Secret, Settings
from security.errors import ConfigurationError, Forbidden
from security.kek import create_kek, load_kek
from storage.models import DataKey

PASSPHRASE = "correct horse battery staple 7"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _clear_forms(key: bytes) -> list[bytes]:
    return [key, key.hex().encode(), key.hex().upper().encode(), base64.b64encode(key),
            base64.urlsafe_b64encode(key).rstrip(b"=")]


# -- 1. the key-encryption key file ----------------------------------------------------------

def test_sealed_kek_file_is_private_and_opaque(tmp_path: Path) -> None:
    path = tmp_path / "data" / "keys" / "kek.json"
    kek = create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    assert len(kek) == 32
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    content = path.read_bytes()
    for form in _clear_forms(kek):
        assert form not in content
    assert PASSPHRASE.encode() not in content
    document = json.loads(content)
    assert document["sealing"] == "scrypt" and "key" not in document
    assert document["n"] >= 2**15  # the production cost, not a test shortcut
    assert load_kek(path, Secret(PASSPHRASE), dev_mode=False) == kek
    # Dev mode changes nothing for a sealed file: it still needs the passphrase.
    assert load_kek(path, Secret(PASSPHRASE), dev_mode=True) == kek

    # A second file with the same passphrase has its own salt, nonce and key.
    other_path = tmp_path / "other" / "kek.json"
    other = create_kek(other_path, Secret(PASSPHRASE), dev_mode=False)
    other_document = json.loads(other_path.read_text())
    assert other != kek
    assert other_document["salt"] != document["salt"]
    assert other_document["ciphertext"] != document["ciphertext"]


def test_create_kek_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    kek = create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    with pytest.raises(FileExistsError):
        create_kek(path, Secret("another"), dev_mode=False)
    assert load_kek(path, Secret(PASSPHRASE), dev_mode=False) == kek


def test_wrong_passphrase_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    for wrong in ("correct horse battery staple", PASSPHRASE + " ", PASSPHRASE.upper(), "x"):
        with pytest.raises(ConfigurationError) as caught:
            load_kek(path, Secret(wrong), dev_mode=False)
        assert "wrong ENCLAVE_KEY_PASSPHRASE" in caught.value.message
        assert wrong not in caught.value.message
        assert caught.value.__cause__ is None


def test_sealed_kek_without_passphrase_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    for dev_mode in (False, True):
        with pytest.raises(ConfigurationError) as caught:
            load_kek(path, None, dev_mode=dev_mode)
        assert "sealed" in caught.value.message
        assert "ENCLAVE_KEY_PASSPHRASE" in caught.value.message


def test_unsealed_kek_only_in_development_mode(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "kek.json"
    with pytest.raises(ConfigurationError) as caught:
        create_kek(path, None, dev_mode=False)
    assert "ENCLAVE_KEY_PASSPHRASE" in caught.value.message
    assert not path.exists()

    kek = create_kek(path, None, dev_mode=True)
    assert _mode(path) == 0o600
    assert load_kek(path, None, dev_mode=True) == kek
    for passphrase in (None, Secret(PASSPHRASE)):
        with pytest.raises(ConfigurationError) as caught:
            load_kek(path, passphrase, dev_mode=False)
        assert "unsealed" in caught.value.message and "development mode" in caught.value.message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700, 0o610, 0o601, 0o666])
def test_kek_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "keys" / "kek.json"
    create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    os.chmod(path, mode)
    if mode & 0o077 == 0:  # 0o700: owner-only, executable bit is odd but not a leak
        assert load_kek(path, Secret(PASSPHRASE), dev_mode=False)
        return
    with pytest.raises(ConfigurationError) as caught:
        load_kek(path, Secret(PASSPHRASE), dev_mode=False)
    assert "chmod 600" in caught.value.message
    os.chmod(path, 0o600)
    assert load_kek(path, Secret(PASSPHRASE), dev_mode=False)


def test_missing_kek_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_kek(tmp_path / "keys" / "kek.json", Secret(PASSPHRASE), dev_mode=False)
    assert "enclave init" in caught.value.message


def _damaged(document: dict[str, Any]) -> list[Any]:
    sealed = dict(document)
    flipped = bytearray(base64.b64decode(sealed["ciphertext"]))
    flipped[0] ^= 1
    return [
        "not json at all",
        [1, 2, 3],
        {"format": "something-else/1", "sealing": "none", "key": document["salt"]},
        {k: v for k, v in document.items() if k != "salt"},
        {k: v for k, v in document.items() if k != "ciphertext"},
        {**document, "salt": "!!not base64!!"},
        {**document, "nonce": ""},
        {**document, "n": 3},
        {**document, "n": "many"},
        {**document, "sealing": "tpm2"},
        {**document, "ciphertext": base64.b64encode(bytes(flipped)).decode()},
        {"format": document["format"], "sealing": "none"},
        {"format": document["format"], "sealing": "none", "key": "AAAA"},
    ]


def test_damaged_kek_file_is_a_configuration_error(tmp_path: Path) -> None:
    """A damaged key file is a clear configuration error, never a crash with a traceback."""
    path = tmp_path / "keys" / "kek.json"
    create_kek(path, Secret(PASSPHRASE), dev_mode=False)
    original = json.loads(path.read_text())
    for number, damaged in enumerate(_damaged(original)):
        target = tmp_path / f"damaged{number}" / "kek.json"
        target.parent.mkdir(mode=0o700)
        target.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
        os.chmod(target, 0o600)
        for dev_mode in (False, True):
            with pytest.raises(ConfigurationError) as caught:
                load_kek(target, Secret(PASSPHRASE), dev_mode=dev_mode)
            assert str(target) in caught.value.message or "ENCLAVE_KEY_PASSPHRASE" in \
                caught.value.message, (damaged, caught.value.message)


# -- 2. initialise and open with a sealed key ------------------------------------------------

@pytest.fixture
def sealed_settings(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    database_url = request.getfixturevalue("pg_database") if backend == "postgres" else None
    return Settings(data_dir=tmp_path / "var", database_url=database_url, dev_mode=False,
                    documents="open",
                    key_passphrase=Secret(PASSPHRASE))


@pytest.fixture
def opened(sealed_settings: Settings) -> Iterator[list[Appliance]]:
    """Appliances the test opens, closed at the end whatever happens."""
    appliances: list[Appliance] = []
    yield appliances
    for appliance in appliances:
        appliance.close()


def test_initialise_and_open_with_a_sealed_kek(sealed_settings: Settings,
                                               opened: list[Appliance]) -> None:
    settings = sealed_settings
    first = initialise(settings)
    assert first.created_kek
    assert first.bootstrap_client_id and first.bootstrap_secret
    assert _mode(settings.data_dir) == 0o700
    assert _mode(settings.keys_dir) == 0o700
    assert _mode(settings.kek_path) == 0o600
    credentials_path = settings.bootstrap_credentials_path
    assert _mode(credentials_path) == 0o600
    credentials = json.loads(credentials_path.read_text())
    assert credentials["client_id"] == first.bootstrap_client_id
    assert credentials["client_secret"] == first.bootstrap_secret
    kek_file = settings.kek_path.read_bytes()

    second = initialise(settings)
    assert second.created_kek is False
    assert second.bootstrap_client_id is None and second.bootstrap_secret is None
    assert settings.kek_path.read_bytes() == kek_file  # the KEK was not replaced
    assert json.loads(credentials_path.read_text()) == credentials
    assert _mode(credentials_path) == 0o600

    appliance = Appliance.open(settings)
    opened.append(appliance)
    for form in _clear_forms(appliance.kek):
        assert form not in kek_file
    with appliance.sessions() as session:
        purposes = set(session.scalars(select(DataKey.purpose)))
        clients = session.execute(text("SELECT count(*) FROM api_clients")).scalar_one()
    assert purposes == set(keys.PURPOSES)
    assert clients == 1  # initialise twice issued one bootstrap client, not two

    with TestClient(create_app(appliance), base_url="http://127.0.0.1") as http:
        issued = http.post("/oauth/token", data={"grant_type": "client_credentials"},
                           auth=(credentials["client_id"], credentials["client_secret"]))
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        answer = http.post("/graphql", json={"query": "{ me { id roles } clients { id name } }"},
                           headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert "errors" not in body, body
        assert body["data"]["me"] == {"id": credentials["client_id"], "roles": ["admin"]}
        assert [c["id"] for c in body["data"]["clients"]] == [credentials["client_id"]]
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["keys"] == "ok"


def test_sealed_appliance_refuses_to_open_without_the_right_key(
        sealed_settings: Settings, opened: list[Appliance], tmp_path: Path) -> None:
    settings = sealed_settings
    initialise(settings)
    fields = {"data_dir": settings.data_dir, "database_url": settings.database_url}
    for wrong in (Settings(**fields, dev_mode=False, key_passphrase=Secret("wrong")),
                  Settings(**fields, dev_mode=False),
                  Settings(**fields, dev_mode=True)):
        with pytest.raises(ConfigurationError):
            Appliance.open(wrong)
        with pytest.raises(ConfigurationError):
            initialise(wrong)  # neither re-keys nor re-bootstraps
    assert json.loads(settings.kek_path.read_text())["sealing"] == "scrypt"

    # Another appliance's (correctly sealed) KEK does not open this database's data keys.
    stranger = Settings(data_dir=tmp_path / "stranger", dev_mode=False,
                        key_passphrase=Secret(PASSPHRASE))
    create_kek(stranger.kek_path, stranger.key_passphrase, dev_mode=False)
    settings.kek_path.unlink()
    os.link(stranger.kek_path, settings.kek_path)
    with pytest.raises(ConfigurationError) as caught:
        Appliance.open(settings)
    assert "does not open with this key-encryption key" in caught.value.message

    # A KEK file opened up to the group is refused at start-up too.
    os.chmod(settings.kek_path, 0o640)
    with pytest.raises(ConfigurationError) as caught:
        Appliance.open(settings)
    assert "chmod 600" in caught.value.message


# -- 3. rotation and re-encryption -----------------------------------------------------------

FIELDS = "id lastName email phone address birthDate nationalId notes"


def _create(manager: Any, n: int) -> dict[str, Any]:
    body = manager.gql(
        "mutation($input: ContactInput!) { createContact(input: $input) { " + FIELDS + " } }",
        {"input": {"lastName": f"Rot{n}", "email": f"rot{n}@example.com",
                   "phone": f"+1 555 01{n:02d}", "address": f"{n} Rotation Road",
                   "birthDate": f"19{50 + n}-0{1 + n % 9}-1{n % 10}",
                   "nationalId": f"RT-{n:04d}", "notes": f"note {n}"}})
    assert "errors" not in body, body
    return dict(body["data"]["createContact"])


def _read_all(manager: Any) -> dict[str, dict[str, Any]]:
    body = manager.gql("{ contacts(first: 100) { edges { node { " + FIELDS + " } } } }")
    assert "errors" not in body, body
    return {e["node"]["id"]: e["node"] for e in body["data"]["contacts"]["edges"]}


def _versions(appliance: Appliance) -> dict[str, int]:
    with appliance.engine.connect() as connection:
        return dict(connection.execute(text("SELECT id, key_version FROM contacts")).all())


def _subject_versions(appliance: Appliance) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    with appliance.engine.connect() as connection:
        for subject, version in connection.execute(
                text("SELECT subject_id, version FROM subject_keys")):
            found.setdefault(subject, set()).add(version)
    return found


def _field_keys(appliance: Appliance) -> dict[int, bool]:
    """Field key version -> retired?"""
    with appliance.sessions() as session:
        return {row.version: row.retired_at is not None
                for row in session.scalars(select(DataKey).where(DataKey.purpose == keys.FIELD))}


def test_rotate_then_reencrypt_in_resumable_batches(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    old = [_create(manager, n) for n in range(5)]
    before = _read_all(manager)
    assert {c["id"]: c for c in old} == before
    assert set(_versions(appliance).values()) == {1}
    assert _field_keys(appliance) == {1: False}

    admin = operator("admin")
    with unit_of_work(appliance, admin) as ctx:
        new_version = key_ops.rotate_field_key(ctx)
    assert new_version == 2
    assert _field_keys(appliance) == {1: False, 2: False}

    # After rotation, before re-encryption: new rows use the new version, old rows still read.
    fresh = _create(manager, 9)
    versions = _versions(appliance)
    assert versions[fresh["id"]] == 2
    assert {versions[c["id"]] for c in old} == {1}
    assert _subject_versions(appliance)[fresh["id"]] == {2}
    assert appliance.keyring.current_version(keys.FIELD) == 2
    mid = _read_all(manager)
    assert {k: v for k, v in mid.items() if k != fresh["id"]} == before
    assert mid[fresh["id"]] == fresh

    # Resumable: each batch commits on its own and reports what is left.
    progress = []
    for _ in range(10):
        with unit_of_work(appliance, admin) as ctx:
            batch = key_ops.reencrypt_batch(ctx, batch_size=2)
        progress.append((batch.moved, batch.remaining, batch.target_version,
                         batch.retired_versions))
        still_old = sum(1 for v in _versions(appliance).values() if v != 2)
        assert still_old == batch.remaining  # the batch is committed, not pending
        if batch.remaining == 0:
            break
    assert progress == [(2, 3, 2, ()), (2, 1, 2, ()), (1, 0, 2, (1,))]
    with unit_of_work(appliance, admin) as ctx:
        again = key_ops.reencrypt_batch(ctx, batch_size=2)
    assert (again.moved, again.remaining, again.retired_versions) == (0, 0, ())

    assert set(_versions(appliance).values()) == {2}
    subject_versions = _subject_versions(appliance)
    assert set(subject_versions) == {c["id"] for c in old} | {fresh["id"]}
    assert all(v == {2} for v in subject_versions.values()), subject_versions
    assert _field_keys(appliance) == {1: True, 2: False}
    assert _read_all(manager) == mid

    # Every sealed value was re-sealed: no ciphertext of the old version remains.
    with appliance.engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT email, phone, address, birth_date, national_id, notes FROM contacts")).all()
    for row in rows:
        for blob in row:
            assert blob is not None and int.from_bytes(bytes(blob)[1:5], "big") == 2

    # The audit log recorded the rotation and each batch.
    with appliance.engine.connect() as connection:
        actions = [a for (a,) in connection.execute(text(
            "SELECT action FROM audit_events WHERE action LIKE 'key.%' ORDER BY seq"))]
    assert actions == ["key.rotate", "key.reencrypt", "key.reencrypt", "key.reencrypt", "key.retire"]


def test_rows_written_after_rotation_move_whole(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    contact = _create(manager, 1)
    with unit_of_work(appliance, operator("admin")) as ctx:
        key_ops.rotate_field_key(ctx)
    # Changing one sealed field re-seals every sealed field of the row under the new version.
    body = manager.gql('mutation($id: ID!) { updateContact(id: $id, input: {notes: "moved"}) '
                       '{ ' + FIELDS + ' } }', {"id": contact["id"]})
    assert "errors" not in body, body
    assert body["data"]["updateContact"] == {**contact, "notes": "moved"}
    assert _versions(appliance)[contact["id"]] == 2
    assert _subject_versions(appliance)[contact["id"]] == {2}
    assert _read_all(manager)[contact["id"]] == {**contact, "notes": "moved"}


def test_key_operations_need_key_manage(caller: Any, appliance: Appliance) -> None:
    manager = caller("sales_manager", team="east")
    _create(manager, 1)
    for principal in (operator("sales_manager", team="east"), operator("security_officer"),
                      operator("sales_rep", team="east"), operator()):
        with pytest.raises(Forbidden), unit_of_work(appliance, principal) as ctx:
            key_ops.rotate_field_key(ctx)
        with pytest.raises(Forbidden), unit_of_work(appliance, principal) as ctx:
            key_ops.reencrypt_batch(ctx)
    assert _field_keys(appliance) == {1: False}
    with appliance.engine.connect() as connection:
        refusals = connection.execute(text(
            "SELECT count(*) FROM audit_events WHERE action = 'key.refused' "
            "AND decision = 'deny'")).scalar_one()
    assert refusals == 8  # every refusal is audited


def test_the_passphrase_can_come_from_a_file_or_a_systemd_credential(tmp_path: Path) -> None:
    from security.config import Settings

    secret_file = tmp_path / "pass"
    secret_file.write_text("from a file\n")
    named = Settings.from_env({"ENCLAVE_KEY_PASSPHRASE_FILE": str(secret_file)},
                              data_dir=tmp_path)
    assert named.key_passphrase is not None and named.key_passphrase.reveal() == "from a file"
    credentials = tmp_path / "creds"
    credentials.mkdir()
    (credentials / "enclave-key-passphrase").write_text("from systemd")
    from_credential = Settings.from_env({"CREDENTIALS_DIRECTORY": str(credentials)},
                                        data_dir=tmp_path)
    assert from_credential.key_passphrase is not None
    assert from_credential.key_passphrase.reveal() == "from systemd"
    # The variable itself wins; no credential and no variable means no passphrase.
    both = Settings.from_env({"ENCLAVE_KEY_PASSPHRASE": "direct",
                              "CREDENTIALS_DIRECTORY": str(credentials)}, data_dir=tmp_path)
    assert both.key_passphrase is not None and both.key_passphrase.reveal() == "direct"
    assert Settings.from_env({"CREDENTIALS_DIRECTORY": str(tmp_path)},
                             data_dir=tmp_path).key_passphrase is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        Settings.from_env({"ENCLAVE_KEY_PASSPHRASE_FILE": str(tmp_path / "empty")},
                          data_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="cannot read"):
        Settings.from_env({"ENCLAVE_KEY_PASSPHRASE_FILE": str(tmp_path / "missing")},
                          data_dir=tmp_path)


def test_a_new_record_whose_id_already_has_a_key_fails_whole(
        appliance: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new contact's subject key is made without looking for one (its id was just made). If
    that id had a key all the same (an id used twice), the write fails on the key's primary key
    and nothing of it is written; the key already there is not replaced."""
    from sqlalchemy.exc import IntegrityError

    from schema.ops import contacts as contact_ops
    from storage.models import Contact, SubjectKey

    with unit_of_work(appliance, operator("sales_manager", team="east", id="m")) as ctx:
        first = contact_ops.create_contact(ctx, {"last_name": "First", "email": "f@example.org"})
        first_id = first.id
    with appliance.sessions() as session:
        before = session.scalars(select(SubjectKey.wrapped)
                                 .where(SubjectKey.subject_id == first_id)).all()
        contacts = session.scalar(select(func.count()).select_from(Contact))
    assert len(before) == 1
    monkeypatch.setattr(contact_ops, "new_id", lambda: first_id)
    with pytest.raises(IntegrityError):
        with unit_of_work(appliance, operator("sales_manager", team="east", id="m")) as ctx:
            contact_ops.create_contact(ctx, {"last_name": "Second", "email": "s@example.org"})
    monkeypatch.undo()
    with appliance.sessions() as session:
        assert session.scalars(select(SubjectKey.wrapped)
                               .where(SubjectKey.subject_id == first_id)).all() == before
        assert session.scalar(select(func.count()).select_from(Contact)) == contacts
    with unit_of_work(appliance, operator("sales_manager", team="east", id="m")) as ctx:
        assert contact_ops.get_contact(ctx, first_id) is not None
