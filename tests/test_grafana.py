"""The dashboards as code, offline: rebuilt JSON matches, Grafana can provision it, and it covers the catalogue."""

import importlib.util
import json
import re
from types import ModuleType
from typing import Any

import yaml

from app.observability.metrics import CATALOGUE
from harness import ROOT

GRAFANA = ROOT / "grafana"
# Series Prometheus makes itself for every target, not part of the app's catalogue.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards", GRAFANA / "dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dashboards() -> dict[str, dict[str, Any]]:
    return {path.name: json.loads(path.read_text()) for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]]


def _metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\b(?:by|without)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n not in PROMQL_WORDS}


def test_the_committed_json_is_what_the_code_builds() -> None:
    generator = _generator()
    built = {name: generator.render(build) for name, build in generator.DASHBOARDS.items()}
    committed = {name: (GRAFANA / "dashboards" / name).read_text() for name in _dashboards()}
    assert built == committed, "run: python grafana/dashboards.py"


def test_grafana_can_provision_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
    uids = {d["uid"]: d["type"] for d in datasources["datasources"]}
    assert uids == {"prometheus": "prometheus", "tempo": "tempo"}
    dashboards = _dashboards()
    assert {d["uid"] for d in dashboards.values()} == {"background-tasks", "background-tasks-service"}
    assert {d["title"] for d in dashboards.values()} == {"Background tasks", "Service"}
    for name, dashboard in dashboards.items():
        assert 36 <= dashboard["schemaVersion"] <= 41, name  # what Grafana 10 and 11 load without migrating
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", dashboard["uid"])
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels), f"{name}: panel ids must be unique"
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, panel["title"]
            assert min(grid["w"], grid["h"]) > 0, panel["title"]
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids
            for link in panel.get("links", []):
                assert link["url"].startswith(("/explore?left=", "${sentry_url}/")), link
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == "prometheus"
        used = set(re.findall(r"\$(\w+)", json.dumps(panels)))
        assert used - {"__rate_interval", "__range"} <= set(variables), f"{name}: undefined variables"
        repeated = {p["repeat"] for p in panels if "repeat" in p}
        assert repeated <= set(variables)


def test_the_provider_and_compose_mount_the_same_folder() -> None:
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())
    (path,) = [p["options"]["path"] for p in provider["providers"]]
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    volumes = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{path}:ro" in volumes
    assert "../grafana/provisioning:/etc/grafana/provisioning:ro" in volumes


def test_every_catalogue_metric_is_on_a_panel_and_every_panel_metric_is_in_the_catalogue() -> None:
    catalogue = {spec.name for spec in CATALOGUE}
    used = {name for d in _dashboards().values() for expr in _exprs(d) for name in _metric_names(expr)}
    families = {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in used}
    assert families - PROMETHEUS_OWN <= catalogue, families - PROMETHEUS_OWN - catalogue
    assert catalogue <= families, f"not on any panel: {catalogue - families}"
    assert _metric_names('sum by (le) (rate(x_bucket{a="b"}[5m])) / y_total') == {"x_bucket", "y_total"}
