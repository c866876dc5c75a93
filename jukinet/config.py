"""Node configuration: one frozen dataclass per node, read from a TOML file and
``JUKINET_*`` environment variables, checked before anything starts.

A file looks like::

    listen = "127.0.0.1:50131"
    database_url = "sqlite+aiosqlite:///var/national.db"
    metrics_listen = "127.0.0.1:9131"     # optional

    [tls]
    ca = "pki/ca.pem"
    cert = "pki/national.pem"
    key = "pki/national.key"
    crl = "pki/crl.pem"                    # optional

Relative paths are taken from the file's folder. Every key can be overridden by
an environment variable: ``JUKINET_DATABASE_URL``, ``JUKINET_TLS_CERT`` ...
Any problem is a :class:`~jukinet.errors.ConfigError` with one line saying what.
The README's "Config files" lists every setting of every node.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from jukinet.codes import is_valid_local_government_code
from jukinet.errors import ConfigError
from jukinet.tls import TlsFiles

if TYPE_CHECKING:
    from jukinet.login import LoginPolicy

# Debian's IPA fonts (fonts-ipafont-mincho, fonts-ipafont-gothic), which the
# copies of resident records are printed with (jukinet.copydoc).
IPA_MINCHO = "/usr/share/fonts/opentype/ipafont-mincho/ipam.ttf"
IPA_GOTHIC = "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf"

_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def _check_hostport(name: str, value: str) -> None:
    if not _HOSTPORT.match(value) or int(value.rsplit(":", 1)[1]) > 65535:
        raise ConfigError(f"{name}: expected host:port, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class NodeConfig:
    """Settings every node has."""

    listen: str
    """host:port the node serves gRPC on, with mutual TLS."""
    database_url: str
    """``sqlite+aiosqlite:///file`` (its folder is created at start-up) or
    ``postgresql+asyncpg://user@host:port/db`` (the database must exist)."""
    tls: TlsFiles
    """The ``[tls]`` table: ``ca``, ``cert``, ``key`` and optionally ``crl``."""
    metrics_listen: str = ""
    """host:port of the Prometheus ``/metrics`` endpoint; empty: none."""
    health_listen: str = ""
    """host:port of a plaintext port serving only gRPC health (for a kubelet's
    probe, which cannot present a client certificate); empty: none."""
    log_level: str = "INFO"
    """DEBUG, INFO, WARNING or ERROR (the log goes to stderr)."""

    # Settings holding a file path: relative ones are taken from the config
    # file's folder, like the [tls] paths.
    path_settings: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        """Refuse a bad address, database URL or log level with a :class:`ConfigError`."""
        _check_hostport("listen", self.listen)
        if self.metrics_listen:
            _check_hostport("metrics_listen", self.metrics_listen)
        self._check_health_listen()
        self._check_database_url()
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"log_level: unknown level {self.log_level!r}")

    def _check_health_listen(self) -> None:
        if not self.health_listen:
            return
        _check_hostport("health_listen", self.health_listen)
        # Same host:port as another endpoint: the second bind would fail later
        # with a less clear message, or (gRPC reuses ports) share it silently.
        for other in ("listen", "metrics_listen"):
            if self.health_listen == getattr(self, other):
                raise ConfigError(f"health_listen: {self.health_listen} is also {other}")

    def _check_database_url(self) -> None:
        if not self.database_url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ConfigError(
                "database_url: must start with sqlite+aiosqlite:// or postgresql+asyncpg://"
            )


@dataclass(frozen=True, kw_only=True)
class LoggedNodeConfig(NodeConfig):
    """A node that keeps an operation log (municipal, prefecture, national)."""

    log_key: str = ""
    """The log key file (the node's head-signing key and its witness key);
    empty: ``<tls key>.log.key`` beside the TLS key. ``jukinet pki`` writes
    it; a node without one does not start."""
    log_verifiers: str = ""
    """The verifier keys of the logs of the tier below, one a line; empty:
    ``log-verifiers`` beside the CA certificate (written by ``jukinet pki``).
    Absent: every head from below is refused."""
    checkpoint_interval: int = 10
    """Seconds between signed heads of the log (when it grew), each sent upward."""
    directory_refresh_interval: int = 300
    """Seconds between checks for a newer relay directory: the national node re-reads
    its ``directory`` file (and re-signs before expiry), the others ask the tier above."""
    card_crl_interval: int = 30
    """Seconds between exchanges of resident card CRLs with the tier above (a
    municipality publishes a revocation at once and a prefecture passes it up at
    once; the CRLs a node lacks are fetched this often)."""

    path_settings: ClassVar[tuple[str, ...]] = ("log_key", "log_verifiers")

    def __post_init__(self) -> None:
        """Also refuse a checkpoint or directory refresh interval outside 1 to 3600 seconds."""
        super().__post_init__()
        if not 1 <= self.checkpoint_interval <= 3600:
            raise ConfigError("checkpoint_interval: must be between 1 and 3600 seconds")
        if not 1 <= self.directory_refresh_interval <= 3600:
            raise ConfigError("directory_refresh_interval: must be between 1 and 3600 seconds")
        if not 1 <= self.card_crl_interval <= 24 * 3600:
            raise ConfigError("card_crl_interval: must be between 1 second and 1 day")


@dataclass(frozen=True, kw_only=True)
class NationalConfig(LoggedNodeConfig):
    """The national node."""

    max_pool_size: int = 100_000
    """The largest resident-code pool one request may ask for."""
    purposes: str = ""
    """The purpose registry file (TOML), the same as the gateway's; empty: the packaged one."""
    directory: str = ""
    """The administered relay directory file (TOML, one ``[[node]]`` table per node:
    identity, address, certificate PEM path); empty: no directory is signed and
    nothing is relayed between municipalities."""

    path_settings: ClassVar[tuple[str, ...]] = (
        "purposes",
        "directory",
        *LoggedNodeConfig.path_settings,
    )

    def __post_init__(self) -> None:
        """Also refuse a pool size outside 1 to 1,000,000."""
        super().__post_init__()
        if not 1 <= self.max_pool_size <= 1_000_000:
            raise ConfigError("max_pool_size: must be between 1 and 1000000")


@dataclass(frozen=True, kw_only=True)
class PrefectureConfig(LoggedNodeConfig):
    """A prefecture node: its two-digit code and where the national node listens."""

    prefecture_code: str
    """Two digits, 01 to 47."""
    national_target: str
    """host:port of the national node."""
    push_batch_size: int = 500
    """Notifications per batch relayed to the national node."""
    push_window: int = 4
    """Batches in flight unacknowledged."""

    def __post_init__(self) -> None:
        """Also refuse a bad prefecture code, national address or batching."""
        super().__post_init__()
        if not re.fullmatch(r"\d\d", self.prefecture_code) or not (
            1 <= int(self.prefecture_code) <= 47
        ):
            raise ConfigError("prefecture_code: must be two digits, 01 to 47")
        _check_hostport("national_target", self.national_target)
        _check_batching(self.push_batch_size, self.push_window)


@dataclass(frozen=True, kw_only=True)
class MunicipalConfig(LoggedNodeConfig):
    """A municipal node: its local government code and its prefecture's address."""

    local_government_code: str
    """The six-digit code, check digit included (``312011``)."""
    prefecture_target: str
    """host:port of the municipality's prefecture node."""
    pool_low_watermark: int = 200
    """Refill the resident-code pool when fewer codes than this are free."""
    pool_refill_size: int = 1000
    """Codes asked for at each refill."""
    push_batch_size: int = 500
    """Notifications per batch pushed to the prefecture."""
    push_window: int = 4
    """Batches in flight unacknowledged."""
    card_trust: str = ""
    """The PKI folder operator cards are checked against: the root ``ca.pem``
    and ``crl.pem`` and ``operator-ca-<code>/`` (its ``ca.pem`` and
    ``crl.pem``); empty: the folder of ``tls.ca``."""
    resident_card_ca: str = ""
    """The folder of this municipality's resident card CA (its ``ca.pem``,
    ``ca.key``, ``crl.pem`` and ``card-secret.key``, on this node's host: the
    node signs its residents' cards and its CRL with it); empty:
    ``resident-card-ca-<code>/`` in the card trust folder."""
    session_idle: int = 15 * 60
    """Seconds without a call after which an operator's session ends."""
    session_max: int = 9 * 3600
    """Seconds after the login at which a session ends whatever happens."""
    login_failures: int = 5
    """Wrong passwords in a row that lock an operator's account."""
    lockout: int = 15 * 60
    """Seconds a locked account waits before a login is tried again."""
    password_max_age_days: int = 90
    """Days after which an operator's password must be changed at the next login."""
    password_hash_time_cost: int = 3
    """Argon2id passes per password hash (RFC 9106's second option: 3)."""
    password_hash_memory_kib: int = 64 * 1024
    """Argon2id memory per password hash, in KiB (RFC 9106's second option: 65536)."""
    document_key: str = ""
    """The key that signs the copies of resident records this municipality issues;
    empty: ``<tls key>.doc.key`` beside the TLS key (``jukinet pki`` writes it)."""
    document_certificate: str = ""
    """Its document-signing certificate; empty: ``<tls cert>.doc.pem`` beside the
    TLS certificate."""
    copy_font_mincho: str = IPA_MINCHO
    """The Mincho font (TrueType) the copies are printed with."""
    copy_font_gothic: str = IPA_GOTHIC
    """The Gothic font (TrueType) of the copies' headings."""

    path_settings: ClassVar[tuple[str, ...]] = (
        "log_key",
        "log_verifiers",
        "card_trust",
        "document_key",
        "document_certificate",
        "copy_font_mincho",
        "copy_font_gothic",
        "resident_card_ca",
    )

    def document_files(self) -> tuple[Path, Path]:
        """The document-signing key and certificate (the settings, else beside the TLS files)."""
        from jukinet import pki  # here: config stays below the PKI code

        return (
            Path(self.document_key)
            if self.document_key
            else pki.default_document_key_path(Path(self.tls.key)),
            Path(self.document_certificate)
            if self.document_certificate
            else pki.default_document_certificate_path(Path(self.tls.cert)),
        )

    def login_policy(self) -> LoginPolicy:
        """The limits of logins and sessions these settings give."""
        from jukinet.login import LoginPolicy  # here: the login module is heavier than config

        return LoginPolicy(
            max_failures=self.login_failures,
            lockout=dt.timedelta(seconds=self.lockout),
            password_max_age=dt.timedelta(days=self.password_max_age_days),
            session_idle=dt.timedelta(seconds=self.session_idle),
            session_max=dt.timedelta(seconds=self.session_max),
        )

    def card_trust_dir(self) -> Path:
        """The folder of the card trust (``card_trust``, else the folder of ``tls.ca``)."""
        return Path(self.card_trust) if self.card_trust else Path(self.tls.ca).parent

    def resident_card_ca_dir(self) -> Path:
        """The folder of the resident card CA (``resident_card_ca``, else
        ``resident-card-ca-<code>/`` in the card trust folder)."""
        if self.resident_card_ca:
            return Path(self.resident_card_ca)
        return self.card_trust_dir() / f"resident-card-ca-{self.local_government_code}"

    def __post_init__(self) -> None:
        """Also refuse a bad local government code, prefecture address, pool, batching or
        login policy."""
        super().__post_init__()
        if not 1 <= self.session_idle <= self.session_max <= 3650 * 24 * 3600:
            raise ConfigError(
                "session_idle, session_max: need 1 <= session_idle <= session_max <= 10 years"
            )
        if not 1 <= self.login_failures <= 100:
            raise ConfigError("login_failures: must be between 1 and 100")
        if not 1 <= self.lockout <= 30 * 24 * 3600:
            raise ConfigError("lockout: must be between 1 second and 30 days")
        if not 1 <= self.password_max_age_days <= 36500:
            raise ConfigError("password_max_age_days: must be between 1 and 36500")
        if not 1 <= self.password_hash_time_cost <= 20:
            raise ConfigError("password_hash_time_cost: must be between 1 and 20")
        if not 32 <= self.password_hash_memory_kib <= 4 * 1024 * 1024:
            raise ConfigError("password_hash_memory_kib: must be between 32 and 4194304")
        if not is_valid_local_government_code(self.local_government_code):
            raise ConfigError(
                f"local_government_code: {self.local_government_code!r} is not a valid code"
            )
        _check_hostport("prefecture_target", self.prefecture_target)
        if not 0 <= self.pool_low_watermark < self.pool_refill_size <= 100_000:
            raise ConfigError("pool: need 0 <= pool_low_watermark < pool_refill_size <= 100000")
        _check_batching(self.push_batch_size, self.push_window)


@dataclass(frozen=True, kw_only=True)
class GatewayConfig(NodeConfig):
    """The agency gateway: where the national node listens, which purpose registry.

    The gateway keeps no database: ``database_url`` must stay unset; the
    only thing it writes is its spool of refusals (``denial_spool``).
    ``purposes`` is the statutory purpose registry (TOML); empty means the
    packaged one. ``batch_pipeline`` is how many
    VerifyBatch messages of one stream may be at the national node at once.
    """

    database_url: str = ""
    national_target: str
    """host:port of the national node."""
    purposes: str = ""
    """A purpose registry file (TOML); empty: the packaged one."""
    batch_pipeline: int = 2
    """VerifyBatch messages of one stream at the national node at once."""
    denial_spool: str = "gateway-denials.jsonl"
    """The file that keeps refusals the national node could not record until it
    is back (append-only, fsync per line); relative to the config file's folder."""

    path_settings: ClassVar[tuple[str, ...]] = ("purposes", "denial_spool")

    def __post_init__(self) -> None:
        """Also refuse a bad national address or a batch pipeline outside 1 to 16."""
        super().__post_init__()
        _check_hostport("national_target", self.national_target)
        if not 1 <= self.batch_pipeline <= 16:
            raise ConfigError("batch_pipeline: must be between 1 and 16")
        if not self.denial_spool:
            raise ConfigError("denial_spool: a file path is required")

    def _check_database_url(self) -> None:
        if self.database_url:
            raise ConfigError("database_url: the gateway keeps no data; remove this setting")


def _check_batching(batch: int, window: int) -> None:
    if not 1 <= batch <= 10_000:
        raise ConfigError("push_batch_size: must be between 1 and 10000")
    if not 1 <= window <= 64:
        raise ConfigError("push_window: must be between 1 and 64")


C = TypeVar("C", bound=NodeConfig)


def _convert(name: str, kind: Any, value: Any) -> Any:
    if kind is int or kind == "int":
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a whole number")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{name}: expected text, got {value!r}")
    return value


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_config(
    cls: type[C],
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Read ``cls`` from a TOML file (optional) overlaid with ``JUKINET_*`` variables."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        file = Path(path)
        try:
            raw = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {file}: {exc}") from None
        base = file.resolve().parent
    tls_raw = raw.pop("tls", {})
    if not isinstance(tls_raw, dict):
        raise ConfigError("tls: expected a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "tls"}
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name in fields:
        value = env.get(f"JUKINET_{name.upper()}", raw.get(name))
        if value is not None:
            kind = hints[name]
            if isinstance(kind, types.UnionType):
                kind = str
            values[name] = _convert(name, kind, value)
    tls_values: dict[str, Path | None] = {}
    for key in ("ca", "cert", "key", "crl"):
        value = env.get(f"JUKINET_TLS_{key.upper()}", tls_raw.pop(key, None))
        if value is not None:
            if not isinstance(value, str):
                raise ConfigError(f"tls.{key}: expected a path")
            tls_values[key] = _resolve(base, value)
    if tls_raw:
        raise ConfigError(f"unknown tls setting(s): {', '.join(sorted(tls_raw))}")
    for key in ("ca", "cert", "key"):
        if key not in tls_values:
            raise ConfigError(f"tls.{key}: missing (set it in [tls] or JUKINET_TLS_{key.upper()})")
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"missing setting(s): {', '.join(missing)}")
    for name in cls.path_settings:
        # A default path too is taken from the config file's folder.
        default = fields[name].default
        value = values.get(name, default if isinstance(default, str) else "")
        if value:
            values[name] = str(_resolve(base, value))
    url = values.get("database_url", "")
    if url.startswith("sqlite+aiosqlite:///") and not url.startswith("sqlite+aiosqlite:////"):
        relative = url.removeprefix("sqlite+aiosqlite:///")
        if relative and relative != ":memory:":
            values["database_url"] = f"sqlite+aiosqlite:///{_resolve(base, relative)}"
    tls = TlsFiles(
        ca=tls_values["ca"],  # type: ignore[arg-type]
        cert=tls_values["cert"],  # type: ignore[arg-type]
        key=tls_values["key"],  # type: ignore[arg-type]
        crl=tls_values.get("crl"),
    )
    return cls(tls=tls, **values)


__all__ = [
    "GatewayConfig",
    "LoggedNodeConfig",
    "MunicipalConfig",
    "NationalConfig",
    "NodeConfig",
    "PrefectureConfig",
    "load_config",
]
