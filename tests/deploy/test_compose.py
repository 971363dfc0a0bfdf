"""deploy/docker-compose.yml and the Prometheus/Grafana files it mounts: they parse,
every relay command and OUTBOX_RELAY_* variable exists in the CLI, and the pieces point
at each other (ports, paths, roles, grants)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from relay.config import DEFAULT_METRICS_PORT
from relay.grants import render_grants
from tests.deploy.contract import (
    DEPLOY,
    LOOPBACK,
    envvars,
    load_yaml,
    parse_args,
    project,
    shutdown_seconds,
)
from tests.deploy.test_dockerfile import final

COMPOSE = load_yaml(DEPLOY / "docker-compose.yml")
SERVICES = COMPOSE["services"]
IMAGE = f"outbox-relay:{project()['version']}"
RELAY_SERVICES = {
    name: s
    for name, s in SERVICES.items()
    if s.get("image") == IMAGE and "migrate" not in (s.get("command") or ["run"])
}
MIGRATE_SERVICES = {
    name: s
    for name, s in SERVICES.items()
    if s.get("image") == IMAGE and "migrate" in (s.get("command") or [])
}


def relay_args(service: dict) -> list[str]:
    import json

    return list(service.get("command") or json.loads(final("CMD")[0]))


def test_the_stack_has_every_piece():
    for name in ("postgres", "kafka", "rabbitmq", "prometheus", "grafana", "sample-writer"):
        assert name in SERVICES
    assert len(RELAY_SERVICES) >= 3 and MIGRATE_SERVICES
    kafka_relays = [
        s for s in RELAY_SERVICES.values() if s["environment"]["OUTBOX_RELAY_CONNECTOR"] == "kafka"
    ]
    assert len(kafka_relays) >= 2, "two relays share one outbox"
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert "wal_level=logical" in SERVICES["postgres"]["command"]


def test_images_are_built_from_the_dockerfile_with_the_project_version():
    for name in (*RELAY_SERVICES, *MIGRATE_SERVICES):
        service = SERVICES[name]
        assert service["image"] == IMAGE
    builds = [s["build"] for s in SERVICES.values() if "build" in s]
    assert builds and all(b == {"context": "..", "dockerfile": "deploy/Dockerfile"} for b in builds)


@pytest.mark.parametrize("name", sorted({**RELAY_SERVICES, **MIGRATE_SERVICES}))
def test_relay_commands_and_variables_exist_in_the_cli(name):
    service = SERVICES[name]
    args = relay_args(service)
    environment = {k: str(v) for k, v in service.get("environment", {}).items()}
    unknown = set(environment) - envvars(args[0])
    assert not unknown, f"{name} sets variables `outbox-relay {args[0]}` does not read"
    parse_args(args, environment)


def test_secrets_are_files_and_every_file_exists():
    for name, secret in COMPOSE["secrets"].items():
        assert (DEPLOY / secret["file"]).is_file(), name
    for name, service in SERVICES.items():
        if service.get("image") == IMAGE:
            for key in service.get("environment", {}):
                assert not re.search(r"PASSWORD$|_DSN$|_URL$", key), (
                    f"{name}: {key} puts a secret in the environment; use a *_FILE secret"
                )
        for secret in service.get("secrets", []):
            assert secret in COMPOSE["secrets"]
        for key, value in service.get("environment", {}).items():
            if key.endswith("_FILE") and str(value).startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in service["secrets"], (name, key)


def test_published_ports_bind_loopback_only():
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).split(":")[0] in LOOPBACK, f"{name} publishes {port} publicly"


def test_migration_then_grants_then_relays():
    assert MIGRATE_SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    grants = SERVICES["grants"]
    assert "service_completed_successfully" in str(grants["depends_on"])
    for name, service in {**RELAY_SERVICES, "sample-writer": SERVICES["sample-writer"]}.items():
        condition = service["depends_on"]["grants"]["condition"]
        assert condition == "service_completed_successfully", name


def test_relays_stop_gracefully_within_the_grace_period():
    for name, service in RELAY_SERVICES.items():
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert service.get("stop_signal", "SIGTERM") == "SIGTERM"
        assert grace > shutdown_seconds(service["environment"]), name


def test_relays_listen_where_prometheus_can_scrape_them():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    for name, service in RELAY_SERVICES.items():
        env = service["environment"]
        port = int(env.get("OUTBOX_RELAY_METRICS_PORT", DEFAULT_METRICS_PORT))
        assert port == DEFAULT_METRICS_PORT
        assert env.get("OUTBOX_RELAY_METRICS_HOST") not in LOOPBACK | {None}, (
            f"{name} would listen on loopback only: Prometheus could not scrape it"
        )
        assert f"{name}:{port}" in targets
    assert {t.split(":")[0] for t in targets} <= set(SERVICES)


def test_prometheus_loads_the_alert_rules_it_is_given():
    config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in SERVICES["prometheus"]["volumes"])
    for rule_file in config["rule_files"]:
        source = next(src for src, target in mounts.items() if target == rule_file)
        assert (DEPLOY / source).is_file(), f"{source} (alert rules) is missing"
        rules = load_yaml(DEPLOY / source)
        assert rules["groups"] and all(group["rules"] for group in rules["groups"])


def test_grafana_provisions_the_datasource_and_the_dashboard():
    mounts = dict(v.rsplit(":", 1)[0].split(":") for v in SERVICES["grafana"]["volumes"])
    provisioning = DEPLOY / next(s for s, t in mounts.items() if t == "/etc/grafana/provisioning")
    (source,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.port == 9090
    assert "127.0.0.1:9090:9090" in SERVICES["prometheus"]["ports"]
    (provider,) = load_yaml(provisioning / "dashboards" / "outbox-relay.yml")["providers"]
    folder = next(s for s, t in mounts.items() if t == provider["options"]["path"])
    dashboard = DEPLOY / folder / "outbox-relay.json"
    assert dashboard.is_file(), "deploy/grafana/dashboards/outbox-relay.json is missing"
    text = dashboard.read_text()
    __import__("json").loads(text)
    uids = set(re.findall(r'"uid":\s*"([^"$]+)"', text)) & {"prometheus", "Prometheus"}
    assert not uids or uids == {source["uid"]}


def test_the_grants_file_is_what_the_relay_prints_today():
    text = (DEPLOY / "compose" / "grants.sql").read_text()
    body = text.split("\n\n", 1)[1]  # after the header comment
    expected = "".join(
        render_grants(role, schema, mode)
        for schema in ("outbox", "outbox_amqp")
        for role, mode in (("relay", "poll"), ("writer", "producer"))
    )
    assert body == expected, "regenerate deploy/compose/grants.sql (see its header)"
    schemas = {a[a.index("--schema") + 1] for a in map(relay_args, MIGRATE_SERVICES.values())}
    assert schemas == {"outbox", "outbox_amqp"}


def test_roles_and_secrets_agree():
    roles = (DEPLOY / "compose" / "initdb" / "10-roles.sql").read_text()
    created = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']+)'", roles))
    for secret, role in (("migrate_dsn", "app"), ("relay_dsn", "relay"), ("writer_dsn", "writer")):
        url = urlsplit((DEPLOY / COMPOSE["secrets"][secret]["file"]).read_text().strip())
        assert (url.username, url.password) == (role, created[role])
        assert url.hostname == "postgres"
    amqp = urlsplit((DEPLOY / COMPOSE["secrets"]["amqp_url"]["file"]).read_text().strip())
    env = SERVICES["rabbitmq"]["environment"]
    assert (amqp.username, amqp.password) == (
        env["RABBITMQ_DEFAULT_USER"],
        env["RABBITMQ_DEFAULT_PASS"],
    )


def test_the_sample_writer_enqueues_into_both_outboxes_as_the_producer():
    writer = " ".join(SERVICES["sample-writer"]["command"])
    assert "outbox.enqueue(" in writer and "outbox_amqp.enqueue(" in writer
    assert "writer_dsn" in writer
