"""Every setting of the service, read from the environment in one place.

The README's configuration table mirrors `SETTINGS`; a test keeps the two in step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

VerifyMode = Literal["enforce", "off"]


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        None,
        "PostgreSQL URL (`postgresql://user@host:5432/db`). Unset: an embedded PostgreSQL "
        "is started in `CONVERSATIONS_DATA_DIR`.",
    ),
    Setting(
        "CONVERSATIONS_DATA_DIR",
        ".conversations",
        "Where the embedded PostgreSQL keeps its data (relative to the working directory).",
    ),
    Setting("CONVERSATIONS_HOST", "127.0.0.1", "Address `serve` listens on."),
    Setting("CONVERSATIONS_PORT", "8000", "Port `serve` listens on."),
    Setting(
        "CONVERSATIONS_AUTO_MIGRATE",
        "true",
        "`serve` applies pending migrations on start (`false` to leave that to `migrate`).",
    ),
    Setting(
        "CONVERSATIONS_MAX_BODY_BYTES",
        "1048576",
        "Largest webhook body accepted (at most 1073741823, PostgreSQL's largest value); "
        "larger ones get 413 and are not read further.",
    ),
    Setting(
        "CONVERSATIONS_BODY_TIMEOUT",
        "30",
        "Seconds a webhook's whole body may take to arrive; a slower one is answered 408 "
        "and nothing is stored.",
    ),
    Setting(
        "CONVERSATIONS_STREAM_STALL_TIMEOUT",
        "60",
        "Seconds an event stream (`/events/stream`) may wait on a client that does not read "
        "what it was sent (its buffers full) before the stream is closed.",
    ),
    Setting(
        "CONVERSATIONS_WEBHOOK_VERIFY",
        "enforce",
        "`enforce`: a webhook needs a valid `X-GHL-Signature` (Ed25519) or `X-WH-Signature` "
        "(RSA). `off`: signatures are checked and recorded but not required.",
    ),
    Setting(
        "CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY",
        None,
        "PEM text, or a path to a PEM file, replacing HighLevel's published Ed25519 key.",
    ),
    Setting(
        "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY",
        None,
        "PEM text, or a path to a PEM file, replacing HighLevel's published RSA key.",
    ),
    Setting(
        "CONVERSATIONS_DB_POOL_SIZE",
        "10",
        "Size of each of a `serve` process's connection pools to PostgreSQL (webhooks, "
        "async reads, sync reads; the group-commit writer has 2 of its own).",
    ),
    Setting(
        "CONVERSATIONS_DB_TIMEOUT",
        "5",
        "Seconds a webhook or a read waits for the database before it is answered 503 "
        "(also when the database hangs rather than fails; the live event stream is not "
        "bounded).",
    ),
    Setting(
        "CONVERSATIONS_RETRY_AFTER",
        "5",
        "Seconds sent in `Retry-After` with a 503 while the database is unreachable.",
    ),
    Setting(
        "CONVERSATIONS_BATCH_MAX",
        "500",
        "Most webhooks committed together in one transaction (group commit).",
    ),
    Setting(
        "CONVERSATIONS_PROJECTION_WORKER",
        "true",
        "`serve` keeps the projections current with a catch-up worker (`conversations work`) "
        "it runs as a child process, restarted if it dies (`false`: run `conversations work` "
        "elsewhere, or not at all).",
    ),
    Setting(
        "CONVERSATIONS_READY_MAX_LAG",
        "30",
        "`/readyz` answers 503 while a projection has not applied an event recorded more "
        "than this many seconds ago.",
    ),
    Setting(
        "CONVERSATIONS_READ_CACHE_MB",
        "64",
        "Memory for finished pages of `GET /conversations/{id}/messages` and "
        "`GET /conversations/search`, kept per key until the projections change their "
        "locations (`0`: no page cache).",
    ),
    Setting(
        "CONVERSATIONS_CORS_ORIGINS",
        None,
        "Web origins whose pages may call the read API from a browser (CORS): `*`, or a "
        "comma-separated list such as `https://app.example.com`. Unset: no CORS headers.",
    ),
    Setting("CONVERSATIONS_LOG_LEVEL", "INFO", "`DEBUG`, `INFO`, `WARNING` or `ERROR`."),
    Setting(
        "CONVERSATIONS_LOG_FORMAT",
        "auto",
        "`json` (one object a line), `text`, or `auto`: `text` when standard error is a "
        "terminal (a person reads it), `json` otherwise (systemd, docker, a file).",
    ),
)


MAX_PORT = 65535

MAX_BODY_LIMIT = 2**30 - 1
"""The largest `CONVERSATIONS_MAX_BODY_BYTES`: PostgreSQL stores no value larger (1 GiB
less a byte), so no larger body could be kept. Unbounded, a limit past what a C size
holds (10**20) made every compressed webhook an OverflowError, quarantined as a bug."""


class SettingsError(ValueError):
    """A setting has a value the service cannot use."""


def _get(env: Mapping[str, str], name: str) -> str | None:
    for setting in SETTINGS:
        if setting.name == name:
            value = env.get(name)
            return value if value not in (None, "") else setting.default
    raise KeyError(name)


def _int(env: Mapping[str, str], name: str, minimum: int = 1, maximum: int | None = None) -> int:
    raw = _get(env, name)
    try:
        if not (raw or "").isascii():  # int() takes any script's digits (Arabic-Indic 10)
            raise ValueError(raw)
        value = int(raw or "")
    except ValueError:
        raise SettingsError(f"Setting {name}={raw!r} is not an integer.") from None
    if value < minimum:
        raise SettingsError(f"Setting {name}={value} must be at least {minimum}.")
    if maximum is not None and value > maximum:
        raise SettingsError(f"Setting {name}={value} must be at most {maximum}.")
    return value


def _float(env: Mapping[str, str], name: str) -> float:
    raw = _get(env, name)
    try:
        if not (raw or "").isascii():
            raise ValueError(raw)
        value = float(raw or "")
    except ValueError:
        raise SettingsError(f"Setting {name}={raw!r} is not a number.") from None
    if not math.isfinite(value):
        raise SettingsError(f"Setting {name}={raw!r} is not a finite number.")
    if value <= 0:
        raise SettingsError(f"Setting {name}={value} must be positive.")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = (_get(env, name) or "").lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"Setting {name}={raw!r} is not a boolean (true/false).")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = (_get(env, name) or "").lower()
    if raw not in choices:
        raise SettingsError(f"Setting {name}={raw!r} is not one of {', '.join(choices)}.")
    return raw


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """`*`, or origins (`scheme://host[:port]`, as a browser sends them in `Origin`)."""
    raw = _get(env, name) or ""
    origins = tuple(origin.strip().rstrip("/") for origin in raw.split(",") if origin.strip())
    if "*" in origins:
        if len(origins) > 1:
            raise SettingsError(f"Setting {name}: `*` cannot be combined with origins.")
        return origins
    for origin in origins:
        scheme, separator, host = origin.partition("://")
        if scheme not in ("http", "https") or not separator or not host or "/" in host:
            raise SettingsError(
                f"Setting {name}: {origin!r} is not an origin like https://app.example.com."
            )
    return origins


def _pem(env: Mapping[str, str], name: str) -> str | None:
    """A PEM given inline, or the contents of the file it names."""
    raw = _get(env, name)
    if raw is None or "-----BEGIN" in raw:
        return raw
    path = Path(raw).expanduser()
    try:
        return path.read_text()
    except OSError as error:
        raise SettingsError(
            f"Setting {name}={raw!r} is neither PEM text nor a readable file: {error}"
        ) from None
    except UnicodeDecodeError:  # a DER key, say: it was a UnicodeDecodeError traceback
        raise SettingsError(
            f"Setting {name}={raw!r} names a file that is not PEM text (a binary DER key? "
            "`openssl pkey -pubin -inform DER -in FILE` prints it as PEM)."
        ) from None


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    data_dir: Path
    host: str
    port: int
    auto_migrate: bool
    max_body_bytes: int
    webhook_verify: VerifyMode
    ed25519_public_key: str | None
    rsa_public_key: str | None
    db_pool_size: int
    db_timeout: float
    retry_after: int
    batch_max: int
    projection_worker: bool
    ready_max_lag: float
    log_level: str
    log_format: str
    cors_origins: tuple[str, ...] = ()
    read_cache_mb: int = 64
    body_timeout: float = 30.0
    stream_stall_timeout: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        verify = _choice(env, "CONVERSATIONS_WEBHOOK_VERIFY", ("enforce", "off"))
        return cls(
            database_url=_get(env, "DATABASE_URL"),
            data_dir=Path(_get(env, "CONVERSATIONS_DATA_DIR") or ".conversations"),
            host=_get(env, "CONVERSATIONS_HOST") or "127.0.0.1",
            port=_int(env, "CONVERSATIONS_PORT", minimum=0, maximum=MAX_PORT),
            auto_migrate=_bool(env, "CONVERSATIONS_AUTO_MIGRATE"),
            max_body_bytes=_int(env, "CONVERSATIONS_MAX_BODY_BYTES", maximum=MAX_BODY_LIMIT),
            webhook_verify="enforce" if verify == "enforce" else "off",
            ed25519_public_key=_pem(env, "CONVERSATIONS_WEBHOOK_ED25519_PUBLIC_KEY"),
            rsa_public_key=_pem(env, "CONVERSATIONS_WEBHOOK_RSA_PUBLIC_KEY"),
            db_pool_size=_int(env, "CONVERSATIONS_DB_POOL_SIZE"),
            db_timeout=_float(env, "CONVERSATIONS_DB_TIMEOUT"),
            retry_after=_int(env, "CONVERSATIONS_RETRY_AFTER"),
            batch_max=_int(env, "CONVERSATIONS_BATCH_MAX"),
            projection_worker=_bool(env, "CONVERSATIONS_PROJECTION_WORKER"),
            ready_max_lag=_float(env, "CONVERSATIONS_READY_MAX_LAG"),
            log_level=_choice(
                env, "CONVERSATIONS_LOG_LEVEL", ("debug", "info", "warning", "error")
            ).upper(),
            log_format=_choice(env, "CONVERSATIONS_LOG_FORMAT", ("auto", "json", "text")),
            cors_origins=_origins(env, "CONVERSATIONS_CORS_ORIGINS"),
            read_cache_mb=_int(env, "CONVERSATIONS_READ_CACHE_MB", minimum=0),
            body_timeout=_float(env, "CONVERSATIONS_BODY_TIMEOUT"),
            stream_stall_timeout=_float(env, "CONVERSATIONS_STREAM_STALL_TIMEOUT"),
        )
