"""A real Prometheus (Debian's) for the dashboards' and alerts' queries, and a parsed `/metrics`."""

import math
import shutil
import signal
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from harness.processes import ROOT, free_port, spawn, wait_for

PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
COUNTING = ("_total", "_count", "_sum", "_bucket")  # a counter's or a histogram's samples
BACKFILL_STEP_SECONDS = 15


@dataclass
class Prometheus:
    url: str
    at: float | None = None  # evaluation time; None: now

    def query(self, expr: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": expr} if self.at is None else {"query": expr, "time": self.at}
        response = httpx.get(self.url + "/api/v1/query", params=params, timeout=30)
        body = response.json()
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def label_values(self, label: str, match: str) -> list[str]:
        response = httpx.get(self.url + f"/api/v1/label/{label}/values", params={"match[]": match}, timeout=30)
        values: list[str] = response.json()["data"]
        return values


def start_prometheus(workdir: Path, targets: Mapping[str, str | list[str]]) -> Iterator[Prometheus]:
    """Debian's prometheus with the repo's config and rules, scraping each job's targets every
    second, on the data in `workdir / "data"` (none, or what `backfill` wrote)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    config.pop("alerting")  # no Alertmanager here
    config["scrape_configs"] = [
        {
            **{key: value for key, value in job.items() if not key.endswith("_sd_configs")},
            "static_configs": [{"targets": _listed(targets[job["job_name"]])}],
        }
        for job in config["scrape_configs"]
        if job["job_name"] in targets
    ]
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    binary = shutil.which("prometheus")
    assert binary is not None, "make test installs Debian's prometheus"
    args = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    process = spawn(args, None, workdir / "prometheus.log")
    prometheus = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: _prometheus_ready(prometheus), what="prometheus to be ready")
        yield prometheus
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def backfill(workdir: Path, instances: Mapping[tuple[str, str], "Metrics"], start: float, end: float) -> None:
    """Writes to `workdir / "data"` what scrapes of each (job, instance) every 15 s from `start` to
    `end` would have stored: its counters rising at a steady rate from zero at `start` to their
    values at `end`, so that every window's rate has a value, its gauges as they are throughout,
    and `up` at 1."""
    times = range(math.ceil(start), math.floor(end) + 1, BACKFILL_STEP_SECONDS)
    start, end = times[0], times[-1]
    series = [
        (name, ",".join(f'{k}="{_escaped(v)}"' for k, v in sorted({*labels, ("job", job), ("instance", where)})), value)
        for (job, where), metrics in instances.items()
        for (name, labels), value in {("up", frozenset()): 1.0, **metrics}.items()
        if not name.endswith("_created")  # a creation time, not a value a query reads
    ]
    lines = [
        f"{name}{{{labels}}} {_number(value * (at - start) / (end - start) if name.endswith(COUNTING) else value)} {at}"
        for name, labels, value in sorted(series, key=lambda one: one[0])  # OpenMetrics: a family's lines together
        for at in times
    ]
    source = workdir / "backfill.om"
    source.write_text("\n".join(lines) + "\n# EOF\n")
    promtool = shutil.which("promtool")
    assert promtool is not None, "make test installs Debian's prometheus"
    command = [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(workdir / "data")]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def _escaped(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return "NaN" if math.isnan(value) else "+Inf" if value == math.inf else repr(value)


def _listed(targets: str | list[str]) -> list[str]:
    return [targets] if isinstance(targets, str) else targets


def _prometheus_ready(prometheus: Prometheus) -> bool:
    try:
        return httpx.get(prometheus.url + "/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


class Metrics(dict[tuple[str, frozenset[tuple[str, str]]], float]):
    @classmethod
    def parse(cls, text: str) -> "Metrics":
        return cls.of(text_string_to_metric_families(text))

    @classmethod
    def of(cls, families: Iterable[Metric]) -> "Metrics":
        return cls(
            {(sample.name, frozenset(sample.labels.items())): sample.value for f in families for sample in f.samples}
        )

    def since(self, before: "Metrics") -> "Metrics":
        return Metrics({key: self.get(key, 0.0) - before.get(key, 0.0) for key in self.keys() | before.keys()})

    def counted_since(self, before: "Metrics") -> "Metrics":
        """Counters and histograms as `since` gives them; gauges as they are."""
        return Metrics({key: v - before.get(key, 0.0) if key[0].endswith(COUNTING) else v for key, v in self.items()})

    def get_value(self, name: str, **labels: str) -> float:
        """The sum over every series of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.items() if n == name and wanted <= ls)

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(ls)[label] for (n, ls) in self if n == name and label in dict(ls)}
