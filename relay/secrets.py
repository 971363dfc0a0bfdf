"""Secrets from files: the DSN, the AMQP URL and librdkafka options.

Orchestrators hand secrets over as files (Kubernetes Secret volumes, Docker secrets,
systemd ``LoadCredential=``), which keeps them out of ``ps``, ``/proc/*/environ`` and
crash reports. A file holds the value alone; one trailing newline (``\\n`` or ``\\r\\n``,
as editors and ``echo`` leave it) is removed, nothing else. Errors name the file and the
flag, never its content.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from relay.dsn import secrets_in
from relay.errors import ConfigError

# librdkafka properties whose values are secrets (sasl.password, ssl.key.password,
# sasl.oauthbearer.client.secret, sasl.jaas.config, ssl.key.pem, ...).
SECRET_OPTION_WORDS = ("password", "secret", "jaas", "token", "key.pem", "oauthbearer.config")
# Shorter values would scrub ordinary words out of every log line.
MIN_SECRET_LENGTH = 3


def read_secret_file(path: str | Path, what: str, flag: str) -> str:
    """The content of ``path`` without one trailing newline; ConfigError if unusable."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"the {what} file {str(path)!r} ({flag}) does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"the {what} file {str(path)!r} ({flag}) is a directory") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            f"the {what} file {str(path)!r} ({flag}) cannot be read: {reason.lower()}"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"the {what} file {str(path)!r} ({flag}) is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text.strip():
        raise ConfigError(f"the {what} file {str(path)!r} ({flag}) is empty")
    return text


def value_or_file(
    value: str | None,
    path: str | Path | None,
    *,
    what: str,
    flag: str,
    file_flag: str,
) -> str | None:
    """``value`` or the content of ``path``; giving both is a ConfigError.

    ``value`` is None (or empty) when the user did not give it; the caller's default
    applies when this returns None.
    """
    if path is None or str(path) == "":
        return value or None
    if value:
        raise ConfigError(f"give either {flag} or {file_flag}, not both")
    return read_secret_file(path, what, file_flag)


def parse_option_lines(text: str, source: str) -> dict[str, str]:
    """``name=value`` lines (a librdkafka properties file): blank lines and lines
    starting with ``#`` are skipped; the value is everything after the first ``=``."""
    options: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep or not name.strip():
            # the line may be a secret: say where it is, not what it says
            raise ConfigError(f"line {number} of {source} is not name=value")
        options[name.strip()] = value.strip()
    return options


def read_option_files(paths: Iterable[str | Path], flag: str) -> dict[str, str]:
    """The options of every file in order; a later file wins for the same name."""
    options: dict[str, str] = {}
    for path in paths:
        text = read_secret_file(path, "options", flag)
        options.update(parse_option_lines(text, f"{str(path)!r} ({flag})"))
    return options


def secret_option_values(options: Mapping[str, str]) -> list[str]:
    """Values of options that look secret, plus passwords inside URL-like values."""
    found = [
        value
        for name, value in options.items()
        if any(word in name.lower() for word in SECRET_OPTION_WORDS)
    ]
    found.extend(secrets_in(*options.values()))
    return [value for value in found if len(value) >= MIN_SECRET_LENGTH]
