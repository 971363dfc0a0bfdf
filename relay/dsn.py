"""Describe and redact connection strings so no password reaches a log or an error."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict

from relay.errors import ConfigError

_URL_PASSWORD = re.compile(
    r"(?P<head>[a-z][a-z0-9+.\-]*://[^:/@\s]*:)(?P<secret>[^@\s]*)(?=@)", re.I
)
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<secret>'(?:[^'\\]|\\.)*'|\S+)", re.I)


def redact(text: str) -> str:
    """Replace passwords in URLs (``user:secret@``) and key=value DSNs with ``***``."""
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + "***", text)
    return _KV_PASSWORD.sub(lambda m: m.group("head") + "***", text)


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
    """The passwords contained in the given DSNs/URLs, so output can be scrubbed of them."""
    found: list[str] = []
    for text in dsns_or_urls:
        for match in _URL_PASSWORD.finditer(text):
            if match.group("secret"):
                found.append(match.group("secret"))
        try:
            password = conninfo_to_dict(text).get("password")
        except Exception:
            password = None
        if password:
            found.append(str(password))
    return [s for s in found if len(s) >= 3]
