"""The running appliance: settings, database, keys, authoriser and token service, opened once.

`initialise` makes a data folder usable (idempotent); `Appliance.open` loads it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from schema.audit_writer import AuditWriter
from schema.crm_defaults import seed_crm_defaults
from security import audit, keys
from security.audit import AuditEntry
from security.audit_group import LoopAppender
from security.audit_ship import Shipper
from security.authz import (
    POLICY_VERSION_KEY,
    Authoriser,
    PolicySnapshot,
    Rule,
    bump_policy_version,
)
from security.config import Settings
from security.default_policy import DEFAULTS_REVISION, default_rules, rules_added_since
from security.errors import ConfigurationError
from security.kek import create_kek, load_kek, write_private_file
from security.keys import KeyRing
from security.passwords import hash_secret, new_client_secret
from security.principal import Principal
from security.tokens import TokenService
from storage import migrate
from storage.counters import read_counter
from storage.db import make_engine, make_session_factory
from storage.ids import new_id
from storage.models import ApiClient, PolicyRule, Setting
from storage.raw_connections import RawConnections

KEYS_VERSION_KEY = "keys_version"
DEFAULTS_REVISION_KEY = "default_policy_revision"
APPLIANCE_ID_KEY = "appliance_id"
BOOTSTRAP_CLIENT_NAME = "bootstrap-admin"

SYSTEM = Principal(id="enclave", name="Enclave", roles=("system",), kind="system")


class Appliance:
    def __init__(self, settings: Settings, engine: Engine, kek: bytes, *,
                 unsafe_unguarded_for_benchmark: bool = False) -> None:
        self.settings = settings
        #: Benchmark baseline only: no encryption, authorisation or audit (security.unguarded).
        self.unguarded = unsafe_unguarded_for_benchmark
        self.engine = engine
        self.sessions: sessionmaker[Session] = make_session_factory(engine)
        #: Ships each signed audit checkpoint to ENCLAVE_AUDIT_SYSLOG after its commit.
        self.shipper = Shipper(settings.audit_syslog, self.sessions) \
            if settings.audit_syslog else None
        self._kek = kek
        self.authoriser = Authoriser()
        #: Plain connections for the one-statement reads of the lean lane (PostgreSQL only;
        #: schema.compiled.lean), as many kept idle as the ORM pool keeps.
        self.raw_connections = (
            RawConnections(engine.url,
                           size=engine.pool.size() if isinstance(engine.pool, QueuePool) else 5,
                           statement_timeout_ms=settings.statement_timeout_ms)
            if engine.dialect.name == "postgresql" else None)
        self._lock = threading.Lock()
        self._keys_version = -1
        self.keyring: KeyRing
        self.tokens: TokenService
        with self.sessions() as session:
            self._load_keys(session, read_counter(session, KEYS_VERSION_KEY))
        #: Where audit entries are written: in a caller's transaction, or batched for reads
        #: (schema.audit_writer).
        self.audit_writer = AuditWriter(engine, self.sessions, lambda: self.keyring,
                                        checkpoint_every=settings.audit_checkpoint_every,
                                        disabled=unsafe_unguarded_for_benchmark)
        #: Group commit of read entries from worker threads (RequestContext.defer_read_audit).
        self.audit_group = self.audit_writer.group

    @classmethod
    def open(cls, settings: Settings, *, unsafe_unguarded_for_benchmark: bool = False) -> Appliance:
        kek = load_kek(settings.kek_path, settings.key_passphrase, dev_mode=settings.dev_mode)
        embedded = settings.embedded_database_path
        if embedded is not None and not embedded.exists():
            raise _database_lost(embedded)  # opening must not create an empty one
        engine = make_engine(settings.resolved_database_url)
        try:
            revision = migrate.current_revision(engine)
        except DatabaseError as exc:
            engine.dispose()
            if embedded is None or "not a database" not in str(exc.orig):
                raise
            raise ConfigurationError(
                f"{embedded} is not a SQLite database (damaged or replaced): restore the last "
                "backup into a new data folder (`enclave backup restore`)") from None
        if revision != migrate.head_revision():
            engine.dispose()
            raise ConfigurationError(
                f"the database is at migration {revision or 'none'}, expected "
                f"{migrate.head_revision()}; run `enclave init`"
            )
        try:
            return cls(settings, engine, kek,
                       unsafe_unguarded_for_benchmark=unsafe_unguarded_for_benchmark)
        except BaseException:  # e.g. the data keys do not open: do not leak the pool
            engine.dispose()
            raise

    @property
    def kek(self) -> bytes:
        return self._kek

    def loop_appender(self) -> LoopAppender:
        """The batched append of audit entries for coroutines on the running event loop."""
        return self.audit_writer.loop_appender()

    @property
    def keys_version(self) -> int:
        """The keys version this process has loaded (`refresh` follows the database's)."""
        return self._keys_version

    def _load_keys(self, session: Session, version: int) -> None:
        keyring = KeyRing.load(session, self._kek)
        self.keyring = keyring
        self.tokens = TokenService(keyring, issuer=self.settings.resolved_issuer,
                                   audience=self.settings.audience,
                                   lifetime=self.settings.token_lifetime)
        self._keys_version = version

    def refresh(self, session: Session,
                versions: Mapping[str, str | None] | None = None) -> PolicySnapshot:
        """Pick up key and policy changes made by other processes; one small query, or none
        when the unit's first statement brought both `versions` along (settings rows by key,
        read in this same transaction)."""
        if versions is None:
            versions = dict(session.execute(
                select(Setting.key, Setting.value).where(
                    Setting.key.in_((KEYS_VERSION_KEY, POLICY_VERSION_KEY)))
            ).all())
        values = {k: v for k, v in versions.items() if v is not None}
        keys_version = int(values.get(KEYS_VERSION_KEY, 0))
        if keys_version != self._keys_version:
            with self._lock:
                if keys_version != self._keys_version:
                    self._load_keys(session, keys_version)
        return self.authoriser.snapshot(session, int(values.get(POLICY_VERSION_KEY, 0)))

    def append_audit(self, session: Session, entries: list[AuditEntry]) -> list[int]:
        """Append audit entries in the caller's transaction."""
        return self.audit_writer.append(session, entries)

    def ready(self) -> tuple[bool, dict[str, str]]:
        checks: dict[str, str] = {}
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            self.keyring.current_version(keys.FIELD)
            checks["keys"] = "ok"
        except Exception:
            checks["keys"] = "unavailable"
        return all(v == "ok" for v in checks.values()), checks

    def sign_audit_tail(self, at_least: int = 1) -> int | None:
        """Sign the audit log's end if at least `at_least` entries there are not signed yet,
        without holding appends up (the server's signer, `api.audit_timer`); the size the
        latest checkpoint signs afterwards, or None when another worker's signer is at it."""
        signed = audit.sign_ahead(self.sessions, self.keyring,
                                  checkpoint_every=self.settings.audit_checkpoint_every,
                                  at_least=at_least)
        if signed is not None:
            self.audit_writer.signed_through(signed)
        return signed

    async def close_loop_connections(self) -> None:
        """Close the plain connections the running event loop opened (the lean lane's, the
        audit appender's): call before that loop ends (the server's shutdown does)."""
        if self.raw_connections is not None:
            await self.raw_connections.close_loop()
        await self.audit_writer.close_loop()

    def close(self) -> None:
        if self.shipper is not None:
            self.shipper.close()
        if self.raw_connections is not None:
            self.raw_connections.close()
        self.audit_writer.close()
        self.engine.dispose()


@dataclass(frozen=True)
class InitResult:
    created_kek: bool
    bootstrap_client_id: str | None
    bootstrap_secret: str | None


def _database_lost(path: Path) -> ConfigurationError:
    return ConfigurationError(
        f"the database {path} is missing from a data folder that was initialised: restore the "
        "last backup into this folder (`enclave backup restore FILE --identity ...`), or move "
        "the folder aside and run `enclave init` for a new, empty appliance")


def initialise(settings: Settings) -> InitResult:
    """Make the data folder and database usable. Safe to run again: nothing is re-issued."""
    embedded = settings.embedded_database_path
    if embedded is not None and not embedded.exists() \
            and settings.bootstrap_credentials_path.exists():
        # Keys and a bootstrap client were made here, but the database holding the data keys
        # is gone: a new database would not open the old data, and would leave the folder in
        # a state no command can repair.
        raise _database_lost(embedded)
    made_folder = not settings.data_dir.exists()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    created_kek = not settings.kek_path.exists()
    try:
        if created_kek:
            kek = create_kek(settings.kek_path, settings.key_passphrase,
                             dev_mode=settings.dev_mode)
        else:
            kek = load_kek(settings.kek_path, settings.key_passphrase, dev_mode=settings.dev_mode)
    except BaseException:
        if made_folder and not any(settings.data_dir.iterdir()):
            settings.data_dir.rmdir()  # a refused init leaves nothing behind
        raise
    engine = make_engine(settings.resolved_database_url)
    try:
        migrate.upgrade(engine)
        sessions = make_session_factory(engine)
        with sessions() as session, session.begin():
            created_keys = keys.ensure_data_keys(session, kek)
            audit.ensure_head(session)
            if session.get(Setting, APPLIANCE_ID_KEY) is None:
                session.add(Setting(key=APPLIANCE_ID_KEY, value=new_id()))
            for key in (KEYS_VERSION_KEY, POLICY_VERSION_KEY):
                if session.get(Setting, key) is None:
                    session.add(Setting(key=key, value="0"))
            session.flush()
            seeded = _seed_default_policy(session)
            crm_seeded = seed_crm_defaults(session)
            added_rules = [] if seeded else _add_later_default_rules(session)
            client_id, secret = _bootstrap_admin(session, settings)
            keyring = KeyRing.load(session, kek)
            entries = []
            if created_keys or seeded or crm_seeded:
                entries.append(AuditEntry(
                    actor=SYSTEM.actor, roles=SYSTEM.roles, action="appliance.init",
                    fields=[f"key:{p}" for p in created_keys]
                    + (["policy:defaults"] if seeded else [])
                    + (["crm:defaults"] if crm_seeded else []),
                ))
            if added_rules:
                entries.append(AuditEntry(
                    actor=SYSTEM.actor, roles=SYSTEM.roles, action="policy.defaults",
                    object_type="policy",
                    fields=[":".join(rule.as_tuple()) for rule in added_rules]))
            if client_id:
                entries.append(AuditEntry(actor=SYSTEM.actor, roles=SYSTEM.roles,
                                          action="client.create", object_type="client",
                                          object_ids=[client_id], fields=["role:admin"]))
            audit.append(session, entries, keyring=keyring,
                         checkpoint_every=settings.audit_checkpoint_every)
        if secret is not None:
            write_private_file(settings.bootstrap_credentials_path, json.dumps(
                {"client_id": client_id, "client_secret": secret, "roles": ["admin"],
                 "token_endpoint": f"{settings.resolved_issuer}/oauth/token"}, indent=2) + "\n")
    finally:
        engine.dispose()
    return InitResult(created_kek, client_id, secret)


def _seed_default_policy(session: Session) -> bool:
    if read_counter(session, POLICY_VERSION_KEY) > 0:
        return False
    for rule in default_rules():
        session.add(PolicyRule(role=rule.role, object_type=rule.object_type, field=rule.field,
                               action=rule.action))
    session.merge(Setting(key=DEFAULTS_REVISION_KEY, value=str(DEFAULTS_REVISION)))
    bump_policy_version(session)
    return True


def _add_later_default_rules(session: Session) -> list[Rule]:
    """Give an appliance seeded by an earlier release the default rules added since (e.g. the
    admin's right to manage people's accounts, the auditor role), once: a rule an admin revoked
    afterwards stays revoked."""
    stored = session.get(Setting, DEFAULTS_REVISION_KEY)
    revision = int(stored.value) if stored else 1
    if revision >= DEFAULTS_REVISION:
        return []
    present = {tuple(row) for row in session.execute(select(
        PolicyRule.role, PolicyRule.object_type, PolicyRule.field, PolicyRule.action))}
    added = [rule for rule in rules_added_since(revision) if rule.as_tuple() not in present]
    for rule in added:
        session.add(PolicyRule(role=rule.role, object_type=rule.object_type, field=rule.field,
                               action=rule.action))
    session.merge(Setting(key=DEFAULTS_REVISION_KEY, value=str(DEFAULTS_REVISION)))
    if added:
        session.flush()
        bump_policy_version(session)
    return added


def _bootstrap_admin(session: Session, settings: Settings) -> tuple[str | None, str | None]:
    """Issue the first admin client exactly once, and only into an empty appliance."""
    if session.scalar(select(ApiClient.id).limit(1)) is not None:
        return None, None
    if settings.bootstrap_credentials_path.exists():
        raise ConfigurationError(
            f"{settings.bootstrap_credentials_path} exists but the database has no clients: "
            "this data folder belongs to another database; move the file away to re-bootstrap"
        )
    client_id = f"c-{new_id()}"
    secret = new_client_secret()
    session.add(ApiClient(id=client_id, name=BOOTSTRAP_CLIENT_NAME, roles=["admin"], team=None,
                          secret_hash=hash_secret(secret)))
    return client_id, secret
