"""Settings: immutable, validated when built, secrets hidden in repr."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from security.errors import ConfigurationError

MAX_TOKEN_LIFETIME = 15 * 60
_LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


class Secret:
    """A string that never shows itself in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class SyslogTarget:
    """Where signed audit checkpoints are shipped: `udp://host:port` or `tcp://host:port`."""

    transport: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if self.transport not in ("udp", "tcp"):
            raise ConfigurationError(f"audit syslog transport must be udp or tcp, not "
                                     f"{self.transport!r}")
        if not self.host:
            raise ConfigurationError("audit syslog destination has no host")
        if not 1 <= self.port <= 65535:
            raise ConfigurationError(f"audit syslog port must be 1-65535, got {self.port}")

    @classmethod
    def parse(cls, url: str) -> SyslogTarget:
        parts = urlsplit(url.strip())
        try:
            port = parts.port
        except ValueError:
            port = None
        if port is None or parts.path not in ("", "/") or parts.query or parts.username:
            raise ConfigurationError(f"ENCLAVE_AUDIT_SYSLOG must look like udp://host:514 or "
                                     f"tcp://host:6514, not {url!r}")
        return cls(parts.scheme, parts.hostname or "", port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    data_dir: Path
    database_url: str | None = None
    dev_mode: bool = False
    key_passphrase: Secret | None = field(default=None)
    host: str = "127.0.0.1"
    port: int = 8000
    issuer: str | None = None
    audience: str = "enclave-api"
    token_lifetime: int = 600
    #: A signed checkpoint at least every this many audit entries (the `next` promise of
    #: each checkpoint note), and
    audit_checkpoint_every: int = 512
    #: at most this many seconds after an entry was appended, while a server runs (0: only by
    #: count). Entries not yet signed are what someone with the database could rewrite
    #: unnoticed; the time bound keeps that window short when the appliance is quiet, the
    #: count keeps signing off the busy request path.
    audit_checkpoint_seconds: float = 10.0
    #: Ship every signed audit checkpoint here (RFC 5424 syslog), best effort.
    audit_syslog: SyslogTarget | None = None
    max_body_bytes: int = 1_000_000
    # People's sign-in (docs/signin.md).
    signin_max_failures: int = 5
    signin_lockout_seconds: int = 30
    signin_lockout_max_seconds: int = 3600
    session_idle_seconds: int = 30 * 60
    session_max_seconds: int = 8 * 3600
    # Federation to the organisation's own OIDC provider (off unless oidc_issuer is set).
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: Secret | None = field(default=None)
    oidc_role_claim: str | None = None
    # The audit console's anomaly thresholds (docs/console.md).
    console_burst_reads: int = 50
    console_burst_minutes: int = 5
    console_work_hours: tuple[int, int] = (7, 19)
    console_bulk_records: int = 100
    console_window_days: int = 7
    # GraphQL (docs/documents.md): `trusted` accepts only registered documents, `open` (the
    # development default) any document within the limits below.
    documents: str | None = None
    graphql_max_depth: int = 6
    graphql_max_aliases: int = 15
    graphql_max_tokens: int = 1000
    graphql_max_cost: int = 5000
    max_variables_bytes: int = 64_000
    #: Per API client: a token bucket refilled at `rate_limit` requests/s holding `rate_burst`;
    #: 0 turns it off.
    rate_limit: float = 100.0
    rate_burst: int = 1000
    #: PostgreSQL `SET LOCAL statement_timeout` per unit of work (0: none; SQLite: not applicable).
    statement_timeout_ms: int = 10_000
    #: `enclave serve` worker processes; 0 means one per core.
    workers: int = 0

    def __post_init__(self) -> None:
        if self.documents is None:
            object.__setattr__(self, "documents", "open" if self.dev_mode else "trusted")
        if self.documents not in ("trusted", "open"):
            raise ConfigurationError(f"ENCLAVE_DOCUMENTS must be trusted or open, not "
                                     f"{self.documents!r}")
        for name in ("graphql_max_depth", "graphql_max_aliases", "graphql_max_tokens",
                     "graphql_max_cost", "max_variables_bytes"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.rate_limit < 0 or self.rate_burst < 1:
            raise ConfigurationError("rate_limit must be >= 0 (0: off) and rate_burst >= 1")
        if self.audit_checkpoint_seconds < 0:
            raise ConfigurationError("audit_checkpoint_seconds must not be negative (0: off)")
        if self.statement_timeout_ms < 0 or self.workers < 0:
            raise ConfigurationError("statement_timeout_ms and workers must not be negative")
        if not 60 <= self.token_lifetime <= MAX_TOKEN_LIFETIME:
            raise ConfigurationError(
                f"token lifetime must be between 60 and {MAX_TOKEN_LIFETIME} seconds, "
                f"got {self.token_lifetime}"
            )
        if not 1 <= self.port <= 65535:
            raise ConfigurationError(f"port must be 1-65535, got {self.port}")
        if self.audit_checkpoint_every < 1:
            raise ConfigurationError("audit_checkpoint_every must be at least 1")
        if self.signin_max_failures < 1:
            raise ConfigurationError("signin_max_failures must be at least 1")
        if not 1 <= self.signin_lockout_seconds <= self.signin_lockout_max_seconds:
            raise ConfigurationError("the sign-in lock-out must be at least 1 second and at "
                                     "most signin_lockout_max_seconds")
        if not 60 <= self.session_idle_seconds <= self.session_max_seconds <= 24 * 3600:
            raise ConfigurationError("sessions: 60 s <= idle timeout <= maximum <= 24 h")
        if self.oidc_issuer is not None:
            if not self.oidc_issuer.startswith(("https://", "http://")):
                raise ConfigurationError("ENCLAVE_OIDC_ISSUER must be an http(s) URL")
            if self.oidc_issuer.startswith("http://") and not _is_loopback_url(self.oidc_issuer):
                raise ConfigurationError("ENCLAVE_OIDC_ISSUER must use https (plain http only "
                                         "on loopback, for tests)")
            if not self.oidc_client_id or not self.oidc_client_secret:
                raise ConfigurationError("federation needs ENCLAVE_OIDC_CLIENT_ID and "
                                         "ENCLAVE_OIDC_CLIENT_SECRET beside ENCLAVE_OIDC_ISSUER")
        if self.console_burst_reads < 1 or not 1 <= self.console_burst_minutes <= 24 * 60:
            raise ConfigurationError("console bursts: at least 1 read in 1-1440 minutes")
        start, end = self.console_work_hours
        if not 0 <= start < end <= 24:
            raise ConfigurationError("ENCLAVE_CONSOLE_WORK_HOURS must look like 7-19 (UTC hours, "
                                     "start before end)")
        if self.console_bulk_records < 1 or not 1 <= self.console_window_days <= 366:
            raise ConfigurationError("console: bulk records at least 1, window 1-366 days")

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def kek_path(self) -> Path:
        return self.keys_dir / "kek.json"

    @property
    def bootstrap_credentials_path(self) -> Path:
        return self.data_dir / "bootstrap-credentials.json"

    @property
    def embedded_database_path(self) -> Path | None:
        """The SQLite file in the data folder, when no database URL is set."""
        return None if self.database_url else self.data_dir / "enclave.db"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.embedded_database_path}"

    @property
    def resolved_issuer(self) -> str:
        return self.issuer or f"http://{self.host}:{self.port}"

    @property
    def cookie_secure(self) -> bool:
        """Cookies are `Secure` (and `__Host-` named) except in development mode on loopback
        without TLS: browsers drop Secure cookies over plain http."""
        return not (self.dev_mode and self.host in _LOOPBACK_HOSTS
                    and not self.resolved_issuer.startswith("https://"))

    @property
    def federation_enabled(self) -> bool:
        return self.oidc_issuer is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ENCLAVE_* variables; keyword arguments win over the environment."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "data_dir": Path(env.get("ENCLAVE_DATA_DIR", "var")).absolute(),
            "database_url": env.get("ENCLAVE_DATABASE_URL") or None,
            "dev_mode": env.get("ENCLAVE_DEV_MODE", "") in ("1", "true", "yes"),
            "issuer": env.get("ENCLAVE_ISSUER") or None,
        }
        passphrase = env.get("ENCLAVE_KEY_PASSPHRASE") or _passphrase_from_file(env)
        if passphrase:
            values["key_passphrase"] = Secret(passphrase)
        for name, key in (("port", "ENCLAVE_PORT"), ("token_lifetime", "ENCLAVE_TOKEN_LIFETIME")):
            if env.get(key):
                try:
                    values[name] = int(env[key])
                except ValueError:
                    raise ConfigurationError(f"{key} must be a whole number") from None
        if env.get("ENCLAVE_HOST"):
            values["host"] = env["ENCLAVE_HOST"]
        if env.get("ENCLAVE_AUDIT_SYSLOG"):
            values["audit_syslog"] = SyslogTarget.parse(env["ENCLAVE_AUDIT_SYSLOG"])
        for name, key in (("oidc_issuer", "ENCLAVE_OIDC_ISSUER"),
                          ("oidc_client_id", "ENCLAVE_OIDC_CLIENT_ID"),
                          ("oidc_role_claim", "ENCLAVE_OIDC_ROLE_CLAIM")):
            if env.get(key):
                values[name] = env[key].rstrip("/") if name == "oidc_issuer" else env[key]
        if env.get("ENCLAVE_OIDC_CLIENT_SECRET"):
            values["oidc_client_secret"] = Secret(env["ENCLAVE_OIDC_CLIENT_SECRET"])
        values.update(_console_from_env(env))
        values.update(_graphql_from_env(env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if isinstance(values.get("data_dir"), str):
            values["data_dir"] = Path(str(values["data_dir"])).absolute()
        return cls(**values)  # type: ignore[arg-type]


def _console_from_env(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for name, key in (("console_burst_reads", "ENCLAVE_CONSOLE_BURST_READS"),
                      ("console_burst_minutes", "ENCLAVE_CONSOLE_BURST_MINUTES"),
                      ("console_bulk_records", "ENCLAVE_CONSOLE_BULK_RECORDS"),
                      ("console_window_days", "ENCLAVE_CONSOLE_WINDOW_DAYS")):
        if env.get(key):
            try:
                values[name] = int(env[key])
            except ValueError:
                raise ConfigurationError(f"{key} must be a whole number") from None
    hours = env.get("ENCLAVE_CONSOLE_WORK_HOURS")
    if hours:
        start, _, end = hours.partition("-")
        if not (start.strip().isdigit() and end.strip().isdigit()):
            raise ConfigurationError("ENCLAVE_CONSOLE_WORK_HOURS must look like 7-19")
        values["console_work_hours"] = (int(start), int(end))
    return values


_WHOLE_NUMBER_SETTINGS = (("graphql_max_depth", "ENCLAVE_GRAPHQL_MAX_DEPTH"),
                          ("graphql_max_aliases", "ENCLAVE_GRAPHQL_MAX_ALIASES"),
                          ("graphql_max_tokens", "ENCLAVE_GRAPHQL_MAX_TOKENS"),
                          ("graphql_max_cost", "ENCLAVE_GRAPHQL_MAX_COST"),
                          ("max_variables_bytes", "ENCLAVE_MAX_VARIABLES_BYTES"),
                          ("rate_burst", "ENCLAVE_RATE_BURST"),
                          ("statement_timeout_ms", "ENCLAVE_STATEMENT_TIMEOUT_MS"),
                          ("audit_checkpoint_every", "ENCLAVE_AUDIT_CHECKPOINT_EVERY"),
                          ("workers", "ENCLAVE_WORKERS"))


def _graphql_from_env(env: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if env.get("ENCLAVE_DOCUMENTS"):
        values["documents"] = env["ENCLAVE_DOCUMENTS"].strip().lower()
    for name, key in _WHOLE_NUMBER_SETTINGS:
        if env.get(key):
            try:
                values[name] = int(env[key])
            except ValueError:
                raise ConfigurationError(f"{key} must be a whole number") from None
    if env.get("ENCLAVE_AUDIT_CHECKPOINT_SECONDS"):
        try:
            values["audit_checkpoint_seconds"] = float(env["ENCLAVE_AUDIT_CHECKPOINT_SECONDS"])
        except ValueError:
            raise ConfigurationError("ENCLAVE_AUDIT_CHECKPOINT_SECONDS must be a number of "
                                     "seconds") from None
    if env.get("ENCLAVE_RATE_LIMIT"):
        try:
            values["rate_limit"] = float(env["ENCLAVE_RATE_LIMIT"])
        except ValueError:
            raise ConfigurationError("ENCLAVE_RATE_LIMIT must be a number (requests/s)") from None
    return values


def _is_loopback_url(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host in _LOOPBACK_HOSTS or host.startswith("127.")


CREDENTIAL_NAME = "enclave-key-passphrase"


def _passphrase_from_file(env: Mapping[str, str]) -> str | None:
    """The passphrase from ENCLAVE_KEY_PASSPHRASE_FILE, or from the systemd credential
    `enclave-key-passphrase` ($CREDENTIALS_DIRECTORY), so it need not sit in the environment."""
    named = env.get("ENCLAVE_KEY_PASSPHRASE_FILE")
    if named:
        path = Path(named)
    elif env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if not path.exists():
            return None
    else:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot read the key passphrase from {path}: "
                                 f"{exc.strerror}") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigurationError(f"{path} is empty: it should hold the key passphrase")
    return text
