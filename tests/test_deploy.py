"""The deployment files, checked offline: Dockerfile lint, Kubernetes schemas and the drain timing."""

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from app.settings import SHUTDOWN_FLUSH_SECONDS, Settings
from harness import ROOT

K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "kubernetes-validate"), "--strict", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def _deployment() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((K8S / "deployment.yaml").read_text())
    return manifest


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_dockerfile_lints_clean() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_manifests_match_the_kubernetes_schema(tmp_path: Path) -> None:
    manifests = sorted(K8S.glob("*.yaml"))
    assert {m.name for m in manifests} == {"deployment.yaml", "service.yaml", "worker.yaml"}
    result = _validate(*manifests)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a misspelt field is refused.
    broken = tmp_path / "broken.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("readinessProbe:", "readynessProbe:"))
    assert _validate(broken).returncode != 0


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], cwd=ROOT / "deploy" / "prometheus", capture_output=True, text=True, timeout=60, check=False
    )


def test_prometheus_config_and_rules_pass_promtool(tmp_path: Path) -> None:
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
    ):
        result = _promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr
    # The rule tests can fail: a test that expects the wrong threshold is refused.
    wrong = (
        (ROOT / "deploy" / "prometheus" / "alerts.test.yml")
        .read_text()
        .replace("fails for good 10% of", "fails for good 11% of")
    )
    (tmp_path / "alerts.yml").write_text((ROOT / "deploy" / "prometheus" / "alerts.yml").read_text())
    (tmp_path / "alerts.test.yml").write_text(wrong)
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert result.returncode != 0


def test_the_compose_file_matches_the_compose_spec_and_its_files_exist() -> None:
    compose_file = ROOT / "deploy" / "compose.yaml"
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(compose_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load(compose_file.read_text())
    assert set(compose["services"]) == {
        "app",
        "worker",
        "redis",
        "rabbitmq",
        "prometheus",
        "alertmanager",
        "grafana",
        "otel-collector",
        "tempo",
    }
    for service in compose["services"].values():
        assert service["restart"] == "unless-stopped"  # a crashed broker or worker comes back by itself
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source in compose.get("volumes", {}) or (compose_file.parent / source).exists(), volume
    assert (compose_file.parent / compose["services"]["app"]["build"]["context"] / "Dockerfile").exists()
    assert compose["services"]["worker"]["command"] == ["python", "-m", "app.worker_main"]


def test_the_pod_outlives_the_drain_and_keeps_metrics_in_memory() -> None:
    spec = _deployment()["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    drain = float(_env(container).get("DRAIN_SECONDS", Settings().drain_seconds))
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    graceful_timeout = drain + SHUTDOWN_FLUSH_SECONDS  # as deploy/gunicorn.conf.py sets it
    assert spec["terminationGracePeriodSeconds"] > pre_stop + graceful_timeout
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"

    dockerfile = (ROOT / "Dockerfile").read_text()
    multiproc_dir = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", dockerfile)
    assert multiproc_dir is not None
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts[multiproc_dir.group(1)]]["emptyDir"]["medium"] == "Memory"
    assert spec["securityContext"]["runAsNonRoot"] is True


def test_the_worker_pod_outlives_its_shutdown() -> None:
    manifest = yaml.safe_load((K8S / "worker.yaml").read_text())
    spec = manifest["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = _env(container)
    shutdown = float(env.get("WORKER_SHUTDOWN_SECONDS", Settings().worker_shutdown_seconds))
    # Running tasks get WORKER_SHUTDOWN_SECONDS; requeueing the rest and flushing spans take the margin.
    assert spec["terminationGracePeriodSeconds"] >= shutdown + SHUTDOWN_FLUSH_SECONDS
    assert container["command"] == ["python", "-m", "app.worker_main"]  # as `make worker`: the tests' worker
    port = int(env.get("WORKER_METRICS_PORT", Settings().worker_metrics_port))
    assert container["startupProbe"]["httpGet"]["port"] == port
    assert "WORKER_ALIVE_FILE" in " ".join(container["livenessProbe"]["exec"]["command"])
    assert manifest["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/tmp/prometheus-multiproc"]]["emptyDir"]["medium"] == "Memory"
