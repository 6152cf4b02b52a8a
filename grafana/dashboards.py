"""The dashboards as code. Run `python grafana/dashboards.py` to rewrite grafana/dashboards/*.json.

The JSON is committed and a test rebuilds it and compares, so edit this file, not the JSON.
Datasources are referred to by the fixed uids of grafana/provisioning/datasources.
"""

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
TEMPO_UID = "tempo"
SCHEMA_VERSION = 39
HERE = Path(__file__).resolve().parent
TARGET = 'job=~"$job", instance=~"$instance"'
RATE = "$__rate_interval"

Panel = dict[str, Any]
# NaN is how a value that is not known is exported (a queue depth the broker did not give): said, not a gap.
UNKNOWN = [
    {"type": "special", "options": {"match": match, "result": {"text": "unknown", "color": "orange"}}}
    for match in ("nan", "null")
]


def _quantile(q: float, metric: str, selector: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"


def _targets(exprs: dict[str, str]) -> list[dict[str, Any]]:
    """One query per legend, as A, B, C…"""
    return [
        {"refId": chr(ord("A") + ref), "datasource": PROMETHEUS, "expr": expr, "legendFormat": legend}
        for ref, (legend, expr) in enumerate(exprs.items())
    ]


def _panel(title: str, exprs: dict[str, str], unit: str, description: str, **extra: Any) -> Panel:
    """A time series panel; `exprs` maps each legend to its query."""
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": _targets(exprs),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "mappings": UNKNOWN}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["last", "max"]}},
        **extra,
    }


def _stat(title: str, exprs: dict[str, str], unit: str, description: str) -> Panel:
    """The last value of each query, `unknown` when it is NaN or missing."""
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": PROMETHEUS,
        "targets": _targets(exprs),
        "fieldConfig": {"defaults": {"unit": unit, "mappings": UNKNOWN, "noValue": "unknown"}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["last"], "fields": "", "values": False}, "textMode": "value_and_name"},
    }


def _row(title: str) -> Panel:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _variable(name: str, query: str, *, all_value: str | None = ".*") -> dict[str, Any]:
    variable = {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": PROMETHEUS,
        "definition": query,
        "query": {"query": query, "refId": f"{name}-values"},
        "refresh": 2,  # on time range change
        "multi": True,
        "includeAll": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable


def _layout(panels: list[Panel], width: int = 12, height: int = 8) -> list[Panel]:
    """Two panels a row, a full-width line for each row panel; ids in order."""
    x = y = 0
    for panel_id, panel in enumerate(panels, start=1):
        panel["id"] = panel_id
        if panel["type"] == "row":
            y += height if x else 0
            panel["gridPos"] = {"x": 0, "y": y, "w": 24, "h": 1}
            x, y = 0, y + 1
            continue
        w = panel.pop("width", width)
        if x + w > 24:
            x, y = 0, y + height
        panel["gridPos"] = {"x": x, "y": y, "w": w, "h": height}
        x += w
    return panels


def _dashboard(uid: str, title: str, description: str, variables: list[dict[str, Any]], panels: list[Panel]) -> Any:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fastapi", "background-tasks"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,  # shared crosshair: the gap lines up across panels
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [],
        "panels": _layout(panels),
    }


def _tempo_link(traceql: str) -> dict[str, Any]:
    pane = {"datasource": TEMPO_UID, "queries": [{"refId": "A", "queryType": "traceql", "query": traceql}]}
    return {"title": "Traces in Tempo", "url": "/explore?left=" + quote(json.dumps(pane, separators=(",", ":")))}


def _sentry_link() -> dict[str, Any]:
    return {
        "title": "Sentry issues of these tasks",
        "url": "${sentry_url}/issues/?query=" + quote("background_task:${task}"),
        "targetBlank": True,
    }


# The books across the web and worker jobs: each task handed over is finished, dropped, pending in a
# web worker, waiting in the broker or unacknowledged, unless a process died without settling it.
# deploy/prometheus/alerts.yml records the same sum. Every worker reads one broker: its depth counts once.
LOST = (
    "sum(background_tasks_scheduled_total{{{selector}}})"
    ' - sum(background_task_duration_seconds_count{{{selector}, outcome=~"success|failure"}})'
    " - sum(background_tasks_dropped_total{{{selector}}})"
    " - sum(background_tasks_pending{{{selector}}})"
    " - (sum(max by (queue) (background_tasks_queued{{{selector}}})) or {no_queue})"
    " - (max(background_tasks_unacked{{{selector}}}) or {no_queue})"
)
# Zero for the broker's terms only where no worker job is scraped: with workers but no depth read
# (Redis or the workers down), the panel shows nothing rather than every queued task as lost.
NO_QUEUE = 'vector(0) unless on () count(up{job=~".*worker.*"})'


def background_tasks() -> Any:
    variables = [
        # Web and worker jobs alike export background_tasks_pending.
        _variable("job", "label_values(background_tasks_pending, job)"),
        _variable("instance", 'label_values(background_tasks_pending{job=~"$job"}, instance)'),
        # No custom "all" value: the gap panels repeat once per route.
        _variable("route", f"label_values(background_tasks_scheduled_total{{{TARGET}}}, route)", all_value=None),
        _variable("task", f'label_values(background_tasks_scheduled_total{{{TARGET}, route=~"$route"}}, task)'),
        {
            "name": "sentry_url",
            "label": "Sentry",
            "type": "textbox",
            "query": "https://sentry.io/organizations/your-org",
            "current": {"text": "https://sentry.io/organizations/your-org", "value": ""},
            "hide": 2,
        },
    ]
    one_route = f'{TARGET}, route="$route"'
    some_routes = f'{TARGET}, route=~"$route"'
    tasks = f'{TARGET}, route=~"$route", task=~"$task"'
    queued = f'{tasks}, job=~".*worker.*"'
    trace_link = _tempo_link('{ name =~ "BackgroundTask .*" && span.http.route = "$route" }')
    failed_traces = _tempo_link('{ name =~ "BackgroundTask .*" && status = error }')
    panels = [
        _row("The gap: what the client waited for, and what the work took"),
        _panel(
            "Response vs task time: $route",
            {
                "response p50": _quantile(0.5, "http_server_request_duration_seconds", one_route),
                "response p95": _quantile(0.95, "http_server_request_duration_seconds", one_route),
                "response p99": _quantile(0.99, "http_server_request_duration_seconds", one_route),
                "task p50": _quantile(0.5, "background_task_duration_seconds", one_route),
                "task p95": _quantile(0.95, "background_task_duration_seconds", one_route),
                "task p99": _quantile(0.99, "background_task_duration_seconds", one_route),
                "start delay p95": _quantile(0.95, "background_task_start_delay_seconds", one_route),
            },
            "s",
            "Response time stops at the last response byte. Task time is each background task's run; "
            "start delay is the wait between the response and the task's start.",
            repeat="route",
            repeatDirection="h",
            maxPerRow=2,
            links=[trace_link],
        ),
        _panel(
            "Gap: task p95 ÷ response p95",
            {
                "{{route}}": _quantile(0.95, "background_task_duration_seconds", some_routes, "le, route")
                + " / "
                + _quantile(0.95, "http_server_request_duration_seconds", some_routes, "le, route")
            },
            "x",
            "How many times longer the work takes than the response that scheduled it.",
        ),
        _panel(
            "Request lifetime p95 (request start → last task end)",
            {"{{route}}": _quantile(0.95, "http_request_lifetime_seconds", some_routes, "le, route")},
            "s",
            "The full cost of a request: its response plus every task it scheduled.",
        ),
        _row("Tasks"),
        _panel(
            "Tasks finished by outcome",
            {
                "{{task}} {{outcome}}": "sum by (task, outcome) "
                f"(rate(background_task_duration_seconds_count{{{tasks}}}[{RATE}]))"
            },
            "ops",
            "Attempts per second that ended, by outcome: success, failure (for good), retry (another attempt "
            "follows), cancelled.",
        ),
        _panel(
            "Failure ratio",
            {
                "{{task}}": f"sum by (task) (rate(background_task_failures_total{{{tasks}}}[{RATE}]))"
                " / sum by (task) (rate(background_task_duration_seconds_count"
                f'{{{tasks}, outcome=~"success|failure"}}[{RATE}]))'
            },
            "percentunit",
            "Tasks failed for good ÷ finished tasks (success or failure; a retried attempt and a cancelled "
            "task did not finish).",
            links=[failed_traces, _sentry_link()],
        ),
        _panel(
            "Failures by exception",
            {
                "{{task}} {{exception}}": "sum by (task, exception) "
                f"(rate(background_task_failures_total{{{tasks}}}[{RATE}]))"
            },
            "ops",
            "Each failure is also a Sentry event tagged background_task, and an ERROR span.",
            links=[failed_traces, _sentry_link()],
        ),
        _panel(
            "Retries",
            {
                "{{task}} {{exception}}": "sum by (task, exception) "
                f"(rate(background_task_retries_total{{{tasks}}}[{RATE}]))"
            },
            "ops",
            "Attempts that failed and will be retried, per second, as each task's retry policy says. Not "
            "failures: a task fails once its last attempt does. Many retries are a dependency in trouble.",
        ),
        _panel(
            "Scheduled",
            {"{{task}}": f"sum by (task) (rate(background_tasks_scheduled_total{{{tasks}}}[{RATE}]))"},
            "ops",
            "Tasks handed over by responses, per second.",
        ),
        _panel(
            "In progress",
            {"{{task}}": f'sum by (task) (background_tasks_in_progress{{{TARGET}, task=~"$task"}})'},
            "short",
            "Tasks running now, across every worker.",
        ),
        _panel(
            "Pending (waiting or running)",
            {"{{instance}}": f"sum by (instance) (background_tasks_pending{{{TARGET}}})"},
            "short",
            "Handed over and not yet finished. At MAX_PENDING_TASKS per worker, task routes answer 503.",
        ),
        _panel(
            "Dropped",
            {
                "{{task}} {{reason}}": "sum by (task, reason) "
                f"(increase(background_tasks_dropped_total{{{tasks}}}[{RATE}]))"
            },
            "short",
            'Tasks that never ran or never finished: reason="shutdown" is the drain deadline (a task running '
            'or waiting to retry); reason="cancelled" a queued task its client cancelled.',
        ),
        _panel(
            "Lost (scheduled - finished - dropped - pending - queued - unacked)",
            {"lost": LOST.format(selector=TARGET, no_queue=NO_QUEUE)},
            "short",
            "Tasks that vanished without being counted as finished or dropped: a web worker was killed "
            "(SIGKILL, out of memory) while they waited or ran, or the broker lost messages. Below zero: a "
            "task ran twice (a redelivery after it had finished). A restart resets its counters.",
        ),
        _panel(
            "Rejected (503, backlog full)",
            {"{{route}}": f"sum by (route) (rate(background_tasks_rejected_total{{{some_routes}}}[{RATE}]))"},
            "reqps",
            "Requests shed because their worker's backlog was full.",
        ),
        _row("Queue (Celery, Dramatiq or RQ workers)"),
        _panel(
            "Queue wait vs task time",
            {
                "queue wait p50": _quantile(0.5, "background_task_start_delay_seconds", queued, "le"),
                "queue wait p95": _quantile(0.95, "background_task_start_delay_seconds", queued, "le"),
                "task p50": _quantile(0.5, "background_task_duration_seconds", queued, "le"),
                "task p95": _quantile(0.95, "background_task_duration_seconds", queued, "le"),
            },
            "s",
            "On a worker the start delay is the queue wait: enqueued (before the response) to started.",
        ),
        _panel(
            "Queue depth",
            {
                "waiting {{queue}}": f"max by (queue) (background_tasks_queued{{{TARGET}}})",
                "unacknowledged": f"max(background_tasks_unacked{{{TARGET}}})",
            },
            "short",
            "Waiting in the broker, and delivered to a worker but not acknowledged (reserved, running, or "
            "held by a dead worker until redelivered). Every worker reads the same broker. A gap is a depth "
            "that could not be read: see Queue depth now.",
        ),
        _stat(
            "Queue depth now",
            {
                "waiting {{queue}}": f"max by (queue) (background_tasks_queued{{{TARGET}}})",
                "unacknowledged": f"max(background_tasks_unacked{{{TARGET}}})",
            },
            "short",
            "The last depth read. unknown: the broker did not answer the worker (Queue depth reads failed says "
            "why), or, for the unacknowledged count, RabbitMQ without BROKER_MANAGEMENT_URL.",
        ),
        _panel(
            "Queue depth reads failed",
            {
                "{{reason}}": "sum by (reason) "
                f"(increase(background_tasks_queue_depth_read_failures_total{{{TARGET}}}[{RATE}]))",
            },
            "short",
            "Scrapes of a worker whose broker read failed, leaving the depth unknown: timeout, unreachable, or "
            "error (the broker answered without a depth: credentials, permissions; the worker's log says which).",
        ),
        _panel(
            "Worker processes",
            {
                "{{instance}}": f'sum by (instance) (server_worker_processes{{{TARGET}, job=~".*worker.*"}})',
                "restarted {{instance}}": "sum by (instance) "
                f"(increase(background_task_worker_restarts_total{{{TARGET}}}[{RATE}]))",
            },
            "short",
            "Live task processes per worker (prefork children, Dramatiq processes, RQ pool workers), and the "
            "times its entry point started a dead queue worker "
            "again (after a broker crash, say).",
        ),
        _panel(
            "Redeliveries and enqueue failures",
            {
                "redelivered {{task}}": "sum by (task) "
                f"(increase(background_task_redeliveries_total{{{tasks}}}[{RATE}]))",
                "not enqueued (503) {{task}}": "sum by (task) "
                f"(increase(background_tasks_enqueue_failures_total{{{tasks}}}[{RATE}]))",
            },
            "short",
            "Tasks run again from a redelivered message (a child died, or a shutdown requeued them), and "
            "requests answered 503 because the broker did not take their task.",
        ),
    ]
    return _dashboard(
        "background-tasks",
        "Background tasks",
        "Response time beside background task time, per route, and the health of the tasks.",
        variables,
        panels,
    )


def service() -> Any:
    variables = [
        _variable("job", "label_values(http_server_request_duration_seconds_count, job)"),
        _variable("instance", 'label_values(http_server_request_duration_seconds_count{job=~"$job"}, instance)'),
        _variable("route", f"label_values(http_server_request_duration_seconds_count{{{TARGET}}}, route)"),
    ]
    routes = f'{TARGET}, route=~"$route"'
    panels = [
        _row("Requests (RED)"),
        _panel(
            "Rate",
            {"{{route}}": f"sum by (route) (rate(http_server_request_duration_seconds_count{{{routes}}}[{RATE}]))"},
            "reqps",
            "Requests per second by route template.",
        ),
        _panel(
            "Errors (5xx ratio)",
            {
                "{{route}}": "sum by (route) "
                f'(rate(http_server_request_duration_seconds_count{{{routes}, status=~"5.."}}[{RATE}]))'
                f" / sum by (route) (rate(http_server_request_duration_seconds_count{{{routes}}}[{RATE}]))"
            },
            "percentunit",
            "Share of responses that were 5xx. A 503 is also a shed request: see Background tasks.",
        ),
        _panel(
            "Duration p50 / p95 / p99",
            {
                f"{{{{route}}}} p{int(q * 100)}": _quantile(
                    q, "http_server_request_duration_seconds", routes, "le, route"
                )
                for q in (0.5, 0.95, 0.99)
            },
            "s",
            "Request start to last response byte; never includes background task time.",
        ),
        _panel(
            "5xx per second",
            {
                "{{route}} {{status}}": "sum by (route, status) "
                f'(rate(http_server_request_duration_seconds_count{{{routes}, status=~"5.."}}[{RATE}]))'
            },
            "reqps",
            "Server errors by route and status.",
        ),
        _row("Processes"),
        _panel(
            "Active requests",
            {"{{route}}": f"sum by (route) (http_server_active_requests{{{routes}}})"},
            "short",
            "Requests not yet answered.",
        ),
        _panel(
            "Workers",
            {"{{instance}}": f"sum by (instance) (server_worker_processes{{{TARGET}}})"},
            "short",
            "Live gunicorn workers per instance: dips show restarts and recycling.",
        ),
        _panel(
            "Scrape duration",
            {"{{instance}}": f"scrape_duration_seconds{{{TARGET}}}"},
            "s",
            "How long Prometheus takes to read /metrics; it must not grow as workers recycle.",
        ),
        _panel(
            "Target up",
            {"{{instance}}": f"up{{{TARGET}}}"},
            "short",
            "1 while Prometheus can scrape the instance.",
        ),
        _row("Telemetry delivery"),
        _panel(
            "Spans and Sentry events not delivered",
            {
                "spans exported {{result}}": f"sum by (result) (rate(otel_spans_exported_total{{{TARGET}}}[{RATE}]))",
                "spans dropped {{reason}}": f"sum by (reason) (rate(otel_spans_dropped_total{{{TARGET}}}[{RATE}]))",
                "Sentry events lost {{reason}}": "sum by (reason) "
                f"(rate(sentry_events_lost_total{{{TARGET}}}[{RATE}]))",
                "task telemetry failed {{part}}": "sum by (part) "
                f"(rate(background_task_telemetry_errors_total{{{TARGET}}}[{RATE}]))",
            },
            "ops",
            "Anything but exported success means traces or Sentry events are missing: the collector or "
            "Sentry refused, hung or fell behind. Requests are not slowed by it. A task's telemetry that "
            "failed (its metrics, span, Sentry report or log line) never changed the task's outcome.",
        ),
    ]
    return _dashboard(
        "background-tasks-service",
        "Service",
        "Rate, errors and duration per route, and the processes behind them.",
        variables,
        panels,
    )


DASHBOARDS = {"background-tasks.json": background_tasks, "service.json": service}


def render(build: Any) -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    for name, build in DASHBOARDS.items():
        (HERE / "dashboards" / name).write_text(render(build))
