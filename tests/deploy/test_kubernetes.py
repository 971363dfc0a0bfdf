"""deploy/kubernetes: plain manifests that parse, render with kustomize, and agree with
the CLI (flags, variables, metrics port, probe paths) and the image (its user)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import PurePosixPath

import pytest

from relay.config import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT
from tests.deploy.contract import (
    DEPLOY,
    HEALTH_PATHS,
    LOOPBACK,
    envvars,
    load_yaml,
    load_yaml_documents,
    parse_args,
    project,
    shutdown_seconds,
)
from tests.deploy.test_dockerfile import runtime_uid

K8S = DEPLOY / "kubernetes"
MANIFESTS = {path.name: load_yaml_documents(path) for path in sorted(K8S.glob("*.yaml"))}
BY_KIND = {doc["kind"]: doc for docs in MANIFESTS.values() for doc in docs}
DEPLOYMENT, JOB, CONFIGMAP = BY_KIND["Deployment"], BY_KIND["Job"], BY_KIND["ConfigMap"]
SECRET = BY_KIND["Secret"]
IMAGE = f"outbox-relay:{project()['version']}"


def pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def container(workload: dict) -> dict:
    (only,) = pod(workload)["containers"]
    return only


def option(args: list[str], flag: str, default: object = None) -> object:
    return args[args.index(flag) + 1] if flag in args else default


def test_every_manifest_is_in_the_kustomization_except_the_secret_example():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    assert listed == set(MANIFESTS) - {"kustomization.yaml", "secret.example.yaml"}
    assert {
        doc["metadata"]["namespace"]
        for n in listed
        for doc in MANIFESTS[n]
        if doc["kind"] != "Namespace"
    } == {kustomization["namespace"]}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_manifests_offline():
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = {doc["kind"] for doc in __import__("yaml").safe_load_all(result.stdout) if doc}
    assert {"Deployment", "Job", "PodDisruptionBudget", "ConfigMap"} <= kinds


def test_the_relays_scale_out_with_a_disruption_budget():
    assert DEPLOYMENT["spec"]["replicas"] >= 2
    budget = BY_KIND["PodDisruptionBudget"]["spec"]
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    allowed = budget.get("maxUnavailable", 0)
    assert 0 < allowed < DEPLOYMENT["spec"]["replicas"] or budget.get("minAvailable", 0) >= 1


def test_the_relay_container_runs_flags_and_variables_the_cli_has():
    relay = container(DEPLOYMENT)
    assert relay["args"][0] == "run"
    unknown = set(CONFIGMAP["data"]) - envvars("run")
    assert not unknown, f"the ConfigMap sets variables `outbox-relay run` does not read: {unknown}"
    params = parse_args(relay["args"], CONFIGMAP["data"])
    assert params["mode"] == "poll"
    assert [e["configMapRef"]["name"] for e in relay["envFrom"]] == [CONFIGMAP["metadata"]["name"]]
    assert relay["image"] == IMAGE and container(JOB)["image"] == IMAGE


def test_probes_and_scraping_use_the_health_server():
    relay = container(DEPLOYMENT)
    params = parse_args(relay["args"], CONFIGMAP["data"])
    port = params["metrics_port"]
    assert port == DEFAULT_METRICS_PORT
    assert params["metrics_host"] not in LOOPBACK, "the kubelet probes the pod IP"
    assert DEFAULT_METRICS_HOST in LOOPBACK  # ... which is why the manifest sets it
    (declared,) = relay["ports"]
    assert declared["containerPort"] == port
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert relay["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in (relay["livenessProbe"], relay["readinessProbe"]):
        assert probe["httpGet"]["port"] in (declared["name"], port)
        assert probe["httpGet"]["path"] in HEALTH_PATHS
    annotations = DEPLOYMENT["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == "/metrics"
    (rule,) = BY_KIND["NetworkPolicy"]["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == [port]


@pytest.mark.parametrize("workload", [DEPLOYMENT, JOB], ids=["deployment", "migrate-job"])
def test_pods_are_locked_down(workload):
    spec = pod(workload)
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == runtime_uid()
    assert security["seccompProfile"]["type"] == "RuntimeDefault"
    assert spec["automountServiceAccountToken"] is False
    own = container(workload)["securityContext"]
    assert own["readOnlyRootFilesystem"] is True
    assert own["allowPrivilegeEscalation"] is False
    assert own["capabilities"]["drop"] == ["ALL"]
    assert not own.get("capabilities", {}).get("add")
    resources = container(workload)["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert resources["limits"]["memory"]


@pytest.mark.parametrize("workload", [DEPLOYMENT, JOB], ids=["deployment", "migrate-job"])
def test_secrets_are_mounted_files_never_environment_variables(workload):
    own = container(workload)
    for variable in own.get("env", []):
        assert "secretKeyRef" not in variable.get("valueFrom", {}), variable["name"]
    assert not [e for e in own.get("envFrom", []) if "secretRef" in e]
    volumes = {v["name"]: v for v in pod(workload)["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in own["volumeMounts"]}
    args = own["args"]
    files = [option(args, f) for f in ("--dsn-file", "--kafka-option-file", "--amqp-url-file")]
    assert files[0], "the DSN comes from --dsn-file"
    for path in filter(None, files):
        parent = str(PurePosixPath(str(path)).parent)
        volume = mounts[parent]["secret"]
        assert volume["secretName"] == SECRET["metadata"]["name"]
        keys = {item["path"]: item["key"] for item in volume["items"]}
        assert keys[PurePosixPath(str(path)).name] in SECRET["stringData"]
        assert next(m for m in own["volumeMounts"] if m["mountPath"] == parent)["readOnly"]


def test_the_migration_job_runs_migrate_as_the_schema_owner():
    args = container(JOB)["args"]
    assert args[0] == "migrate"
    parse_args(args, {"OUTBOX_RELAY_SCHEMA": CONFIGMAP["data"]["OUTBOX_RELAY_SCHEMA"]})
    assert option(args, "--dsn-file").endswith("/migrate-dsn")
    assert option(container(DEPLOYMENT)["args"], "--dsn-file").endswith("/dsn")
    assert pod(JOB)["restartPolicy"] in ("OnFailure", "Never")
    assert JOB["spec"]["backoffLimit"] >= 1


def test_the_grace_period_outlasts_the_drain():
    grace = pod(DEPLOYMENT)["terminationGracePeriodSeconds"]
    assert grace > shutdown_seconds(CONFIGMAP["data"])
    assert "--shutdown-timeout" not in container(DEPLOYMENT)["args"]


def test_the_tmp_volume_makes_a_read_only_root_workable():
    mounts = {m["mountPath"] for m in container(DEPLOYMENT)["volumeMounts"]}
    assert "/tmp" in mounts
