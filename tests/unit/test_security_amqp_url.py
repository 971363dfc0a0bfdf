"""AMQP URLs with TLS: pika's own forms and the RabbitMQ URI query parameters."""

from __future__ import annotations

import ssl
from urllib.parse import quote

import pytest

from connectors.amqp_url import url_parameters
from relay.errors import ConfigError
from tests.support.tls import make_tls_files

SECRET = "Url-pw-4242"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    try:
        return make_tls_files(tmp_path_factory.mktemp("tls"))
    except FileNotFoundError:
        pytest.skip("openssl is not installed")


def test_plain_amqp_has_no_tls():
    params = url_parameters(f"amqp://relay:{SECRET}@rabbit:5672/%2F")
    assert params.ssl_options is None
    assert (params.host, params.port, params.virtual_host) == ("rabbit", 5672, "/")


def test_amqps_alone_verifies_the_broker_with_the_system_cas():
    params = url_parameters(f"amqps://relay:{SECRET}@rabbit/orders")
    context = params.ssl_options.context
    assert params.port == 5671
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert params.virtual_host == "orders"


def test_rabbitmq_tls_parameters_load_the_ca_and_the_client_certificate(tls):
    url = (
        f"amqps://relay:{SECRET}@rabbit:5671/%2F?cacertfile={quote(str(tls.ca))}"
        f"&certfile={quote(str(tls.client_cert))}&keyfile={quote(str(tls.client_key))}"
        "&server_name_indication=rabbit.internal&heartbeat=30"
    )
    params = url_parameters(url)
    context = params.ssl_options.context
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [
        ((("commonName", "outbox-relay test CA"),),)
    ]
    assert params.ssl_options.server_hostname == "rabbit.internal"
    assert params.heartbeat == 30  # pika's own parameters still apply
    assert params.credentials.password == SECRET


def test_verify_none_turns_verification_off(tls):
    params = url_parameters(f"amqps://h/%2F?cacertfile={tls.ca}&verify=verify_none")
    assert params.ssl_options.context.verify_mode == ssl.CERT_NONE


def test_pikas_ssl_options_form_still_works(tls):
    options = quote(str({"ca_certs": str(tls.ca), "server_hostname": "rabbit.internal"}))
    params = url_parameters(f"amqps://relay:{SECRET}@rabbit/%2F?ssl_options={options}")
    assert params.ssl_options.server_hostname == "rabbit.internal"


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("cacertfile=/no/such/ca.pem", r"CA file '/no/such/ca.pem' \(cacertfile\) cannot be"),
        ("certfile=/no/such/c.pem&keyfile=/no/k", r"client certificate '/no/such/c.pem'"),
        ("keyfile=/no/k", "keyfile without a certfile"),
        ("verify=maybe", "verify_peer or verify_none"),
        ("ssl_options=%7B%27ca_certs%27%3A%27%2Fno%2Fca%27%7D", "ssl_options cannot be loaded"),
        ("ssl_options={broken", "not valid"),
    ],
)
def test_bad_tls_settings_are_config_errors_that_never_quote_the_url(query, message):
    with pytest.raises(ConfigError, match=message) as caught:
        url_parameters(f"amqps://relay:{SECRET}@rabbit/%2F?{query}")
    assert SECRET not in str(caught.value)
    error = caught.value  # not chained: a driver's text could hold the URL
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_tls_parameters_on_a_plain_url_are_refused():
    with pytest.raises(ConfigError, match="not amqps://"):
        url_parameters("amqp://rabbit/%2F?cacertfile=/ca.pem")


def test_both_tls_forms_at_once_are_refused(tls):
    with pytest.raises(ConfigError, match="use one"):
        url_parameters(f"amqps://h/%2F?cacertfile={tls.ca}&ssl_options=None")
