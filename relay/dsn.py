"""Check, describe and redact connection strings so no password reaches a log or an error."""

from __future__ import annotations

import functools
import re
from urllib.parse import parse_qsl, urlsplit

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from relay.errors import ConfigError

# ``scheme://user:secret@host``. The secret runs to the LAST ``@`` of the token: a raw
# ``@`` in a password (``u:Wrong@Canary@host``) must not leave its tail in plain sight.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>\S*)(?=@)", re.I)
# ``password=...``; a quoted value may be unterminated (a malformed DSN): redact to the end.
_KV_PASSWORD = re.compile(
    r"(?P<head>\b(?:ssl)?password\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*(?:'|$)|\S+)", re.I
)
_KV_KEYWORD = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)")
_URL_SCHEMES = ("postgresql://", "postgres://")
# libpq parameters that hold secrets (redacted, and scrubbed from every line we print).
SECRET_PARAMETERS = (
    "password",
    "sslpassword",
    "oauth_client_secret",
    "scram_client_key",
    "scram_server_key",
)
# libpq parameters it reads as integers, and only when it connects (too late for exit 2).
_INTEGER_PARAMETERS = (
    "connect_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_SESSION_ATTRS = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")
# Shorter strings would scrub ordinary words out of every line.
MIN_SECRET_LENGTH = 3


def redact(text: str) -> str:
    """Replace passwords in URLs (``user:secret@``) and key=value DSNs with ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)


@functools.cache
def libpq_parameters() -> frozenset[str]:
    """The connection parameters this libpq knows."""
    return frozenset(option.keyword.decode() for option in pq.Conninfo.get_defaults())


def dsn_problems(dsn: str) -> list[str]:
    """What is wrong in the DSN as written, each a sentence naming the parameter (never a
    value: it may be a password). Empty when libpq will accept it."""
    if _is_url(dsn) and _authority(dsn).count("@") > 1:
        return [
            "The database URL has more than one '@' before the host; write an '@' inside "
            "the user name or password as %40."
        ]
    try:
        params = conninfo_to_dict(dsn)
    except Exception:  # psycopg's message quotes the DSN, password included
        return [_unparsable(dsn)]
    return [p for name, value in params.items() if (p := _value_problem(name, str(value)))]


def check_dsn(dsn: str) -> str:
    """``dsn``, or ConfigError naming what is wrong in it."""
    if found := dsn_problems(dsn):
        raise ConfigError(" ".join(found))
    return dsn


def _is_url(dsn: str) -> bool:
    return dsn.lstrip().lower().startswith(_URL_SCHEMES)


def _authority(url: str) -> str:
    rest = url.strip().split("://", 1)[1]
    return re.split(r"[/?#]", rest, maxsplit=1)[0]


def _unparsable(dsn: str) -> str:
    if _is_url(dsn):
        query = urlsplit(dsn.strip()).query
        names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
    else:
        names = _KV_KEYWORD.findall(dsn)
    unknown = [name for name in names if name not in libpq_parameters()]
    if unknown:
        return (
            f"The database DSN parameter {unknown[0]!r} is unknown to PostgreSQL's client "
            "(libpq); see its list of connection parameters."
        )
    return (
        "The database DSN cannot be parsed: write postgresql://user@host:port/dbname or "
        "host=... port=... dbname=..., with quotes around a value that has spaces."
    )


def _value_problem(name: str, value: str) -> str | None:
    if name == "port" and not all(_is_port(part) for part in value.split(",")):
        return "The database DSN parameter 'port' must be a port number (1 to 65535)."
    if name in _INTEGER_PARAMETERS and not re.fullmatch(r"\s*-?\d+\s*", value):
        return f"The database DSN parameter {name!r} must be a whole number."
    if name == "sslmode" and value not in _SSLMODES:
        return f"The database DSN parameter 'sslmode' must be one of: {', '.join(_SSLMODES)}."
    if name == "target_session_attrs" and value not in _SESSION_ATTRS:
        return (
            "The database DSN parameter 'target_session_attrs' must be one of: "
            f"{', '.join(_SESSION_ATTRS)}."
        )
    return None


def _is_port(text: str) -> bool:
    return text == "" or (text.isdigit() and 1 <= int(text) <= 65535)


def describe_dsn(dsn: str) -> str:
    """``user@host:port/dbname`` for messages; never the password."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception as exc:  # psycopg raises ProgrammingError with the DSN text in it
        raise ConfigError(f"the database DSN cannot be parsed ({type(exc).__name__})") from None
    host = params.get("host") or params.get("hostaddr") or "localhost"
    port = params.get("port") or "5432"
    user = params.get("user") or ""
    dbname = params.get("dbname") or user or ""
    who = f"{user}@" if user else ""
    return f"{who}{host}:{port}/{dbname}"


def describe_url(url: str) -> str:
    """``scheme://host:port/path`` of a broker URL, without credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def secrets_in(*dsns_or_urls: str) -> list[str]:
    """The passwords contained in the given DSNs/URLs, so output can be scrubbed of them.

    A password with a raw ``@`` is also given piece by piece: a client that split it at
    the wrong ``@`` quotes its tail as the host name."""
    found: list[str] = []
    for text in dsns_or_urls:
        for match in _URL_PASSWORD.finditer(text):
            found.extend(_with_pieces(match.group("secret")))
        for match in _KV_PASSWORD.finditer(text):
            found.append(match.group("secret").strip("'"))
        try:
            params = conninfo_to_dict(text)
        except Exception:
            continue
        found.extend(str(params[name]) for name in SECRET_PARAMETERS if params.get(name))
    return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET_LENGTH]


def _with_pieces(secret: str) -> list[str]:
    return [secret, *secret.split("@")] if "@" in secret else [secret]
