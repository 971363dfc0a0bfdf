"""Secrets: read from files, collected once, scrubbed from every message.

Orchestrators hand secrets over as files (Kubernetes Secret volumes, Docker secrets,
systemd ``LoadCredential=``), which keeps them out of ``ps``, ``/proc/*/environ`` and
crash reports. A file holds the value alone; one trailing newline (``\\n`` or ``\\r\\n``,
as editors and ``echo`` leave it) is removed, nothing else. Errors name the file and the
flag, never its content.

What is secret is decided in one place: the passwords inside DSNs and URLs, and the
connector options whose names the connector's settings call secret
(``ConnectorSettings.is_secret``). ``redact`` is the one function that scrubs them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from relay import dsn
from relay.errors import ConfigError

# Shorter values would scrub ordinary words out of every log line.
MIN_SECRET_LENGTH = 3
REDACTED = "***"


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


def option_pairs(text: str, source: str) -> list[tuple[str, str]]:
    """``name=value`` lines (a librdkafka properties file) in order: blank lines and lines
    starting with ``#`` are skipped; the value is everything after the first ``=``."""
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep or not name.strip():
            # the line may be a secret: say where it is, not what it says
            raise ConfigError(f"line {number} of {source} is not name=value")
        pairs.append((name.strip(), value.strip()))
    return pairs


def parse_option_lines(text: str, source: str) -> dict[str, str]:
    """``option_pairs`` as a mapping: a later line wins for the same name."""
    return dict(option_pairs(text, source))


def read_private_file(path: str | Path, what: str, flag: str) -> str:
    """``read_secret_file`` of a file that other users cannot read or change.

    The rule is libpq's for its key files: private to its owner (0600, 0400), or owned by
    root and readable by its group (0640, 0440: Kubernetes Secret volumes with fsGroup).
    """
    try:
        info = os.stat(path)
    except OSError:
        return read_secret_file(path, what, flag)  # says what is wrong with the path
    mode = stat.S_IMODE(info.st_mode)
    forbidden = 0o037 if info.st_uid == 0 else 0o077
    if stat.S_ISREG(info.st_mode) and mode & forbidden:
        raise ConfigError(
            f"the {what} file {str(path)!r} ({flag}) can be read or changed by other users "
            f"(mode {mode:04o}); make it private: chmod 600 {path}"
        )
    return read_secret_file(path, what, flag)


def read_option_files(paths: Iterable[str | Path], flag: str) -> dict[str, str]:
    """The options of every file in order; a later file wins for the same name."""
    options: dict[str, str] = {}
    for path in paths:
        text = read_secret_file(path, "options", flag)
        options.update(parse_option_lines(text, f"{str(path)!r} ({flag})"))
    return options


def secret_values(options: Mapping[str, str], is_secret: Callable[[str], bool]) -> list[str]:
    """The values of the options ``is_secret`` names, plus passwords inside URL-like
    values: what ``redact`` must scrub once these options were given."""
    found = [value for name, value in options.items() if is_secret(name)]
    found.extend(dsn.secrets_in(*options.values()))
    return [value for value in found if len(value) >= MIN_SECRET_LENGTH]


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the passwords of URLs and DSNs in it and without ``secrets``."""
    text = dsn.redact(text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
