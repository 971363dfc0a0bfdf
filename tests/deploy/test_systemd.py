"""deploy/systemd: the unit is sandboxed, stops gracefully, reads its settings and
secrets the way the CLI expects; systemd itself verifies it where it is installed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from relay.config import DEFAULT_METRICS_HOST
from relay.durations import parse_duration
from tests.deploy.contract import DEPLOY, envvars, parse_args, shutdown_seconds

UNIT_PATH = DEPLOY / "systemd" / "outbox-relay.service"
ENV_PATH = DEPLOY / "systemd" / "outbox-relay.env"
INSTALLED_COMMAND = str(Path(sys.executable).with_name("outbox-relay"))


def unit() -> dict[str, list[str]]:
    """``Section.Key`` -> values, in order (keys may repeat)."""
    found: dict[str, list[str]] = defaultdict(list)
    section = ""
    for line in UNIT_PATH.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[f"{section}.{key}"].append(value)
    return found


def one(key: str) -> str:
    (value,) = unit()[f"Service.{key}"]
    return value


def example_environment(include_commented: bool = False) -> dict[str, str]:
    found = {}
    for line in ENV_PATH.read_text().splitlines():
        if include_commented:
            line = line.removeprefix("#")
        match = re.match(r"^(OUTBOX_RELAY_\w+)=(.*)$", line)
        if match:
            found[match[1]] = match[2]
    return found


def credential_environment() -> dict[str, str]:
    names = dict(value.split(":", 1) for value in unit()["Service.LoadCredential"])
    environment = {}
    for value in unit()["Service.Environment"]:
        key, _, setting = value.partition("=")
        environment[key] = setting
        if setting.startswith("%d/"):
            assert setting.removeprefix("%d/") in names, f"{key} names no LoadCredential"
    return environment


def test_it_runs_the_installed_command_with_the_example_settings():
    exec_start = shlex.split(one("ExecStart"))
    assert Path(exec_start[0]).name == "outbox-relay"
    assert exec_start[1] == "run"
    environment = {**example_environment(), **credential_environment()}
    unknown = set(example_environment(include_commented=True)) - envvars("run")
    assert not unknown, f"the example sets variables `outbox-relay run` does not read: {unknown}"
    assert set(credential_environment()) <= envvars("run")
    environment["OUTBOX_RELAY_DSN_FILE"] = "/run/credentials/outbox-relay.service/dsn"
    params = parse_args(exec_start[1:], environment)
    assert params["dsn_file"].endswith("/dsn")
    assert params["metrics_host"] == DEFAULT_METRICS_HOST  # loopback on a host


def test_settings_come_from_the_environment_file_and_the_dsn_from_a_credential():
    assert one("EnvironmentFile") == "/etc/outbox-relay/outbox-relay.env"
    assert credential_environment()["OUTBOX_RELAY_DSN_FILE"] == "%d/dsn"
    assert "OUTBOX_RELAY_DSN" not in example_environment()
    assert "DSN" not in " ".join(example_environment())  # no DSN variable at all


def test_it_stops_with_sigterm_after_the_drain_has_had_its_time():
    assert one("KillSignal") == "SIGTERM"
    timeout = parse_duration(one("TimeoutStopSec"), "TimeoutStopSec")
    assert timeout > shutdown_seconds(example_environment())
    assert one("RestartPreventExitStatus") == "2"  # EXIT_USAGE: a configuration error


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("SystemCallArchitectures", "native"),
        ("UMask", "0077"),
    ],
)
def test_sandboxing(key, value):
    assert one(key) == value


def test_only_the_network_families_the_relay_uses():
    families = set(one("RestrictAddressFamilies").split())
    assert families <= {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"}
    assert {"AF_INET", "AF_INET6"} <= families
    assert "@system-service" in unit()["Service.SystemCallFilter"]


def _analyze(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "outbox-relay.service"
    copy.write_text(UNIT_PATH.read_text().replace(one("ExecStart").split()[0], INSTALLED_COMMAND))
    return subprocess.run(
        ["systemd-analyze", *args, str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_verifies_the_unit(tmp_path):
    result = _analyze("verify", tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_rates_the_exposure_low(tmp_path):
    result = _analyze("security", "--offline=yes", tmp_path=tmp_path)
    if "--offline" in result.stderr or "Unknown option" in result.stderr:
        pytest.skip("this systemd-analyze cannot rate a unit offline")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout
