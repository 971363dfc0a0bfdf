"""AMQP URLs to pika connection parameters, TLS included.

Besides everything ``pika.URLParameters`` reads (``amqps://`` alone verifies the broker
against the system's CAs and its host name; ``ssl_options={...}`` is pika's own form),
the RabbitMQ URI query parameters for TLS are understood, so one URL (one secret) can
carry the whole connection::

    amqps://relay:secret@rabbit:5671/%2F?cacertfile=/tls/ca.pem&certfile=/tls/client.pem
        &keyfile=/tls/client.key&server_name_indication=rabbit.internal

``verify=verify_none`` turns verification off (never in production). Errors name the
file and the parameter, never the URL, which holds the password.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pika

from relay.errors import ConfigError

TLS_PARAMETERS = ("cacertfile", "certfile", "keyfile", "verify", "server_name_indication")
VERIFY_CHOICES = ("verify_peer", "verify_none")
SCHEMES = ("amqp", "amqps")
# [s] also keeps redact() from taking this example for a URL with a password in it
URL_FORM = "amqp[s]://user:password@host:port/vhost"


def url_problems(url: str) -> list[str]:
    """What keeps ``url`` from naming a broker, in sentences that never quote it.

    pika itself takes an empty URL or ``amqp://`` for localhost, and fails on others
    with an IndexError or a ValueError that may quote the password.
    """
    if not url.strip():
        return [f"The RabbitMQ URL is empty; give {URL_FORM}."]
    try:
        parts = urlsplit(url)
    except ValueError:  # the only one urlsplit raises: a [ or ] of an IPv6 address alone
        return ["The RabbitMQ URL is not valid: the [ ] around an IPv6 address do not pair."]
    if parts.scheme.lower() not in SCHEMES:
        return [f"The RabbitMQ URL must start with amqp:// or amqps://, as in {URL_FORM}."]
    try:
        _ = parts.port  # the property parses the port: that is the check
    except ValueError:
        return ["The RabbitMQ URL's port is not a number from 0 to 65535."]
    if not parts.hostname:
        return [f"The RabbitMQ URL names no host; give {URL_FORM}."]
    return []


def url_parameters(url: str) -> pika.URLParameters:
    """``pika.URLParameters`` for ``url``, with the RabbitMQ TLS query parameters applied;
    ConfigError for a URL that names no broker (see ``url_problems``)."""
    problems = url_problems(url)
    if problems:
        raise ConfigError(" ".join(problems))
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls = {name: value for name, value in query if name in TLS_PARAMETERS}
    if tls:
        if parts.scheme.lower() != "amqps":
            raise ConfigError(
                f"the AMQP URL has TLS parameters ({', '.join(sorted(tls))}) but is not amqps://"
            )
        if any(name == "ssl_options" for name, _ in query):
            raise ConfigError(
                "the AMQP URL has both ssl_options and cacertfile/certfile/keyfile; use one"
            )
        rest = [(name, value) for name, value in query if name not in TLS_PARAMETERS]
        url = urlunsplit(parts._replace(query=urlencode(rest)))
    params = _pika_parameters(url)
    if tls:
        params.ssl_options = pika.SSLOptions(
            tls_context(tls), server_hostname=tls.get("server_name_indication") or None
        )
    return params


def _pika_parameters(url: str) -> pika.URLParameters:
    try:
        return pika.URLParameters(url)
    except OSError as exc:  # files named in pika's ssl_options={...} (SSLError included)
        raise ConfigError(
            f"The TLS files in the AMQP URL's ssl_options cannot be loaded: {_reason(exc)}."
        ) from None
    except Exception:  # pika's parser raises whatever its input trips: no type is promised
        # Neither chained nor echoed: pika's text could contain the password.
        raise ConfigError("The AMQP URL is not valid.") from None


def tls_context(options: Mapping[str, str]) -> ssl.SSLContext:
    """A client context: the CA file (else the system CAs), an optional client
    certificate, host name verification unless ``verify=verify_none``."""
    verify = options.get("verify") or "verify_peer"
    if verify not in VERIFY_CHOICES:
        raise ConfigError(
            f"the AMQP URL's verify must be verify_peer or verify_none, not {verify!r}"
        )
    certfile, keyfile = options.get("certfile") or None, options.get("keyfile") or None
    if keyfile and not certfile:
        raise ConfigError("the AMQP URL names a keyfile without a certfile")
    cafile = options.get("cacertfile") or None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"the CA file {cafile!r} (cacertfile) cannot be loaded: {_reason(exc)}"
        ) from None
    if certfile:
        try:
            context.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"the client certificate {certfile!r} (certfile) or its key {keyfile!r} "
                f"(keyfile) cannot be loaded: {_reason(exc)}"
            ) from None
    if verify == "verify_none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
