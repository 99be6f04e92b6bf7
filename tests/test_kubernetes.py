"""deploy/kubernetes/ and deploy/kustomization.yaml: valid against Kubernetes' schemas, built by
kustomize, and consistent with the app, the image, the nginx template and the metrics."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT
from helpers import NGINX_TEMPLATE, template_variables

import gunicorn_conf
from bgservice import telemetry

MANIFESTS = PROJECT / "deploy" / "kubernetes"


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        message = f"{name} missing: install {package} (.ci/run does)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_every_manifest_passes_kubernetes_validate_strict():
    files = sorted(MANIFESTS.glob("*.yaml"))
    assert {f.name for f in files} >= {"deployment.yaml", "service.yaml", "pdb.yaml", "hpa.yaml",
                                       "servicemonitor.yaml", "prometheus-adapter-rules.yaml"}
    done = subprocess.run([tool("kubernetes-validate", "kubernetes-validate (PyPI)"), "--strict",
                           "--quiet", *map(str, files)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # the only file it cannot check is the Prometheus Operator's custom resource (checked below)
    warnings = [line for line in done.stdout.splitlines() if line.strip()]
    assert all("ServiceMonitor" in line for line in warnings), warnings


def test_kustomize_builds_them_with_the_nginx_template_as_a_config_map():
    kubectl = tool("kubectl", "Debian's kubernetes-client")
    done = subprocess.run([kubectl, "kustomize", str(PROJECT / "deploy")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    built = {(d["kind"], d["metadata"]["name"].split("-")[0] if d["kind"] == "ConfigMap"
              and d["metadata"]["name"].startswith("u2net-nginx") else d["metadata"]["name"]): d
             for d in yaml.safe_load_all(done.stdout)}
    kinds = {kind for kind, _ in built}
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler",
                     "ServiceMonitor", "ConfigMap"}
    nginx_map = next(d for d in built.values() if d["kind"] == "ConfigMap"
                     and d["metadata"]["name"].startswith("u2net-nginx-"))
    assert nginx_map["data"]["default.conf.template"] == NGINX_TEMPLATE.read_text()
    volumes = built[("Deployment", "u2net")]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "nginx-template", "configMap": {"name": nginx_map["metadata"]["name"]}} in volumes


def test_the_deployment_fits_the_image_the_app_and_the_sidecar():
    deployment, service = load("deployment.yaml"), load("service.yaml")
    pod = deployment["spec"]["template"]["spec"]
    container, nginx = pod["containers"]
    assert "ports" not in container and nginx["ports"] == [{"name": "http", "containerPort": 5002}]
    env = {e["name"]: e.get("value") for e in container["env"]}
    nginx_env = {e["name"]: e["value"] for e in nginx["env"]}
    assert env["HOST"] == "127.0.0.1" and nginx_env["U2NET_UPSTREAM"] == f"127.0.0.1:{env['PORT']}"
    assert nginx_env["NGINX_PORT"] == "5002" and template_variables() <= set(nginx_env)
    assert env["OpenClone_OpenCloneFS"] == "/OpenCloneFS"
    assert {"OpenClone_DB_Host", "OpenClone_DB_Port", "OpenClone_LogDB_Name",
            "OpenClone_LogDB_User", "OpenClone_LogDB_Password"} <= set(env)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["openclone-fs"] == "/OpenCloneFS"
    assert {v["name"] for v in pod["volumes"]} >= set(mounts)
    uid = re.search(r"^USER (\d+):", (PROJECT / "Dockerfile").read_text(), re.MULTILINE).group(1)
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    probes = {kind: container[kind]["httpGet"] for kind in
              ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {p["port"] for p in probes.values()} == {5002}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/ready"
    # the drain (SIGTERM: finish what is in flight) fits in the grace period
    assert pod["terminationGracePeriodSeconds"] > gunicorn_conf.graceful_timeout
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 5002, "targetPort": 5002}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert load("pdb.yaml")["spec"]["selector"] == deployment["spec"]["selector"]


def test_the_autoscaler_and_the_scrape_use_the_services_own_metric_and_port():
    hpa, monitor = load("hpa.yaml"), load("servicemonitor.yaml")
    adapter = yaml.safe_load(load("prometheus-adapter-rules.yaml")["data"]["rules.yaml"])
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == telemetry.QUEUE_DEPTH._name  # what GET /metrics exports
    rule = adapter["rules"][0]
    assert rule["seriesQuery"].startswith(metric + "{") and rule["name"]["as"] == metric
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": load("deployment.yaml")["metadata"]["name"]}
    service = load("service.yaml")
    assert monitor["spec"]["selector"]["matchLabels"] == service["metadata"]["labels"]
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
