"""Every query the dashboards, the alerts and KEDA's trigger make, as Grafana and Prometheus send
them: the tests evaluate each one on a real Prometheus."""

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from harness.processes import ROOT
from harness.prometheus import PROMETHEUS_DIR, Metrics, Prometheus, backfill, start_prometheus

DASHBOARDS = ROOT / "grafana" / "dashboards"
DASHBOARD_NAMES = ("background-tasks.json", "service.json")
SCALED_OBJECT = ROOT / "deploy" / "k8s" / "keda" / "worker-scaledobject.yaml"
SEND_MAIL = "/send-mail/"
WEB_JOB, WORKER_JOB = "background-tasks", "background-tasks-worker"
PER_BROKER = frozenset({"background_tasks_queued", "background_tasks_unacked"})  # each worker reads the same


def dashboard(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return loaded


def panels(name: str) -> list[dict[str, Any]]:
    return [p for p in dashboard(name)["panels"] if p["type"] != "row"]


def panel_queries(name: str) -> dict[str, str]:
    """Every query of a dashboard, by panel title and legend."""
    return {
        f"{panel['title']} / {target['legendFormat']}": target["expr"]
        for panel in panels(name)
        for target in panel["targets"]
    }


def expand(expr: str, window: str, route: str = SEND_MAIL) -> str:
    """What Grafana sends with every variable at "All" and the repeated panel at one route."""
    expr = expr.replace('route="$route"', f'route="{route}"')
    for variable in ("$job", "$instance", "$route", "$task"):
        expr = expr.replace(variable, ".*")
    return expr.replace("$__rate_interval", window).replace("$__range", window)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_signal(rule: dict[str, Any]) -> str:
    """The signal of an alert, which every alert writes as `(signal) <comparison> threshold`."""
    match = re.fullmatch(r"\s*\((.*)\)\s*(?:>|<|==|!=|>=|<=)\s*[\d.]+\s*", rule["expr"], re.DOTALL)
    assert match is not None, f"{rule['alert']}: expr must be (signal) <comparison> threshold"
    return match.group(1)


def scaled_object() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SCALED_OBJECT.read_text())
    return loaded


def every_query(window: str) -> dict[str, str]:
    """Every panel's query, every recording rule's expression, every alert's signal that reads no
    recorded series (Prometheus records only at the present; the rule stands for it) and KEDA's
    trigger, by name."""
    records = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    queries = {title: expand(expr, window) for name in DASHBOARD_NAMES for title, expr in panel_queries(name).items()}
    queries |= records
    for rule in rules():
        if "alert" in rule and not any(record in rule["expr"] for record in records):
            queries[rule["alert"]] = alert_signal(rule)
    (trigger,) = scaled_object()["spec"]["triggers"]
    queries["KEDA trigger"] = trigger["metadata"]["query"]
    return queries


def as_one_worker(workers: Iterable[Metrics]) -> Metrics:
    """What one worker that ran every task would export: counts and processes add up, and the
    broker's depth, which every worker reads, is one number."""
    one = Metrics()
    for metrics in workers:
        for key, value in metrics.items():
            if key[0] not in PER_BROKER:
                one[key] = one.get(key, 0.0) + value
            else:
                assert _shown(one.setdefault(key, value)) == _shown(value), f"the workers read different depths: {key}"
    return one


def answers_on_one_worker_and_on_each(
    workdir: Path, web: Metrics, workers: list[Metrics]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every query's answer on what the workers exported, each scraped as an instance of its own,
    and on what one worker would have exported, both 20 minutes of scrapes up to a minute ago.
    A series that is one instance's (its `instance` label kept) is compared by which there are."""
    end = time.time() - 60
    queries = every_query("10m")
    scenes = {
        "one": {(WEB_JOB, "web"): web, (WORKER_JOB, "worker"): as_one_worker(workers)},
        "each": {(WEB_JOB, "web"): web, **{(WORKER_JOB, f"worker-{n}"): m for n, m in enumerate(workers, 1)}},
    }
    answers = []
    for name, instances in scenes.items():
        (workdir / name).mkdir(parents=True)
        backfill(workdir / name, instances, end - 20 * 60, end)
        for prometheus in start_prometheus(workdir / name, {}):
            prometheus.at = end
            answers.append({title: _answer(prometheus, expr) for title, expr in queries.items()})
    one, each = answers
    return one, each


def _answer(prometheus: Prometheus, expr: str) -> Any:
    result = prometheus.query(expr)
    if any("instance" in sample["metric"] for sample in result):
        return sorted({_key({k: v for k, v in sample["metric"].items() if k != "instance"}) for sample in result})
    return {_key(sample["metric"]): _shown(float(sample["value"][1])) for sample in result}


def _key(labels: dict[str, str]) -> str:
    return json.dumps(labels, sort_keys=True)


def _shown(value: float) -> str:
    """Nine significant digits: sums taken in another order differ in the last bits only."""
    return f"{value:.9g}"
