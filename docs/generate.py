"""The parts of the docs that the code already says, written from it: the settings table (from
the settings model), the metric table (from the catalogue), the performance figures (from
bench/results.json, which `make bench` writes, then calls this) and the capacity plan (from
bench/capacity.json, which `python -m bench.capacity` writes, and the CPU per task of the bench).

`python -m docs.generate` rewrites each page's region between ``<!-- generated: <name> -->`` and
``<!-- end generated -->``; tests/test_docs.py fails when a committed page differs from it.
"""

import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from app.observability.metrics import CATALOGUE
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results.json"
CAPACITY = ROOT / "bench" / "capacity.json"
RATES = (10, 100, 1000)  # tasks a second
FAILURE_RATE = 0.01  # of tasks that fail for good, for the Sentry column
REGION = re.compile(r"(<!-- generated: (?P<name>[a-z]+) -->\n).*?(<!-- end generated -->)", re.DOTALL)
LIBRARIES = ("celery", "dramatiq", "rq")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "shown_default" in extra:
        return str(extra["shown_default"])
    default = field.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def _variables(name: str, field: FieldInfo) -> str:
    alias = field.validation_alias
    names = list(getattr(alias, "choices", None) or [name.upper()])
    return " or ".join(f"`{n}`" for n in names)


def settings_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| {_variables(name, field)} | {_default(field)} | {_cell(field.description or '')} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | exported by | meaning |", "|---|---|---|---|---|"]
    for spec in CATALOGUE:
        labels = ", ".join(f"`{label}`" for label in spec.labels) or "—"
        rows.append(f"| `{spec.exposed_name}` | {spec.kind} | {labels} | {spec.exported_by} | {_cell(spec.help)} |")
    return "\n".join(rows)


def _ratio(value: float) -> str:
    return f"{value:.2f}×"  # noqa: RUF001 - the multiplication sign, as in the docs


def _chart(title: str, bars: dict[str, float], top: float) -> str:
    """A Mermaid bar chart (GitHub and GitLab draw it from the text), with a line at 1.0."""
    labels = ", ".join(f'"{label}"' for label in bars)
    values = ", ".join(f"{value:.2f}" for value in bars.values())
    return "\n".join(
        [
            "```mermaid",
            "xychart-beta",
            f'    title "{title}"',
            f"    x-axis [{labels}]",
            f'    y-axis "throughput ratio" 0 --> {top:g}',
            f"    bar [{values}]",
            f"    line [{', '.join(['1'] * len(bars))}]",
            "```",
        ]
    )


def performance(results: dict[str, Any]) -> str:
    web_bare = {"web, metrics only": results["metrics_only_vs_bare"], "web, everything on": results["full_vs_bare"]}
    web_peer = {
        "web, metrics only ÷ pfi": results["metrics_only_vs_pfi"],
        "web, everything on ÷ stock": results["full_vs_stock"],
    }
    names = {"celery": "Celery", "dramatiq": "Dramatiq", "rq": "RQ"}
    vs_bare = web_bare | {names[lib]: results["worker_vs_bare"][lib] for lib in LIBRARIES}
    vs_stock = web_peer | {names[lib]: results["worker_vs_stock"][lib] for lib in LIBRARIES}
    top = math.ceil(max(1.2, *vs_bare.values(), *vs_stock.values()) * 10) / 10
    targets = results["targets"] | results["queue_targets"]

    def row(label: str, key: str, value: str) -> str:
        target = targets.get(key)
        verdict = "reported" if target is None else f"{target['target']} ({'met' if target['met'] else '**not met**'})"
        return f"| {label} | {value} | {verdict} |"

    rows = [
        f"Measured {results['measured']['web']} (web) and {results['measured']['queue']} (queue) on "
        f"{results['machine']['cores']} cores ({results['machine']['cpu']}, Python {results['machine']['python']}).",
        "",
        "| figure | measured | target |",
        "|---|---|---|",
        *(
            row(label, key, _ratio(results[key]))
            for label, key in (
                ("web, metrics only vs prometheus-fastapi-instrumentator", "metrics_only_vs_pfi"),
                ("web, metrics only vs bare FastAPI", "metrics_only_vs_bare"),
                ("web, everything on vs the stock stack", "full_vs_stock"),
                ("web, everything on vs bare FastAPI", "full_vs_bare"),
            )
        ),
    ]
    for rate, value in results["full_vs_bare_by_sampling"].items():
        if float(rate) < 1:
            rows.append(row(f"web, everything on vs bare, {float(rate):.0%} of traces", "", _ratio(value)))
    for key, label in (
        ("worker_vs_bare", "worker vs the bare library"),
        ("worker_cpu_vs_bare", "worker CPU per task, bare ÷ template"),
        ("worker_vs_stock", "worker vs the library's stock instrumentation"),
        ("enqueue_vs_inprocess", "`/send-mail/` enqueued vs in-process"),
    ):
        for lib in LIBRARIES:
            rows.append(row(f"{names[lib]}: {label}", f"{key}.{lib}", _ratio(results[key][lib])))
    rows.append(
        row("wrapper cost per task, everything on (µs)", "wrapper_us_per_task", f"{results['wrapper_us_per_task']:.0f}")
    )
    rows += [
        "",
        "CPU µs per queued task (1 ms task; bare / template / stock):",
        "",
        "| library | bare | template | stock |",
        "|---|---|---|---|",
    ]
    for lib in LIBRARIES:
        variants = results["worker_throughput"][lib]["1 ms"]["variants"]
        cpu = [f"{variants[v]['cpu_us_per_task']:,.0f}" for v in ("bare", "template", "stock")]
        rows.append(f"| {names[lib]} | {' | '.join(cpu)} |")
    rows += [
        "",
        _chart("Template ÷ bare (1.0: telemetry costs nothing)", vs_bare, top),
        "",
        _chart("Template ÷ stock instrumentation (above 1.0: cheaper than the stock parts)", vs_stock, top),
    ]
    return "\n".join(rows)


def _size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def capacity(measured: dict[str, Any], results: dict[str, Any], ttl_seconds: int) -> str:
    """The plan for RATES tasks a second of one queued task (Celery on Redis), from what was measured."""
    series = measured["series"]
    per_outcome = series["worker_per_outcome"]["success"]
    per_task = series["worker_per_outcome"]["any"]
    cpu_us = results["worker_throughput"]["celery"]["1 ms"]["variants"]["template"]["cpu_us_per_task"]
    web_us = results["request_cost"]["cpu_us_per_request"]["template_spans_no_export"]
    rows = [
        f"Inputs (`python -m bench.capacity`, Celery on Redis): the task state store keeps "
        f"{measured['state_bytes_per_task']:.0f} B of Redis per task (`MEMORY USAGE` of its hash) for "
        f"`TASK_STATE_TTL_SECONDS` ({ttl_seconds:,} s by default); a queued task makes "
        f"{measured['spans_per_task']} spans (the request's, the enqueue's, the run's) of "
        f"{measured['otlp_bytes_per_span']:.0f} B each as OTLP protobuf; a task that fails for good sends "
        f"{measured['sentry_events_per_failure']:.0f} Sentry event of {_size(measured['sentry_bytes_per_event'])}. "
        f"Series: each (task, route) has {per_task} on a worker instance, plus {per_outcome} per outcome it ends "
        f"with (a histogram), plus one per exception class that fails or retries it; each worker instance "
        f"has {series['worker_fixed']} of its own, each web instance {series['web_fixed']} plus "
        f"{series['web_per_outcome']['any']} per (task, route) it schedules. From `make bench`: "
        f"{cpu_us:,.0f} µs of worker CPU per task (a 1 ms task, Celery with the template's telemetry) and "
        f"{web_us:,.0f} µs of web CPU per request (metrics and spans, before their export).",
        "",
        f"| tasks a second | state store at the default TTL | spans a second (100% / 10%) | OTLP bandwidth "
        f"(100% / 10%) | Sentry events a day ({FAILURE_RATE:.0%} failing) | worker cores | web cores |",
        "|---|---|---|---|---|---|---|",
    ]
    for rate in RATES:
        spans = rate * measured["spans_per_task"]
        bandwidth = spans * measured["otlp_bytes_per_span"]
        events = rate * 86_400 * FAILURE_RATE * measured["sentry_events_per_failure"]
        rows.append(
            f"| {rate:,} | {_size(rate * ttl_seconds * measured['state_bytes_per_task'])} "
            f"| {spans:,.0f} / {spans / 10:,.0f} | {_size(bandwidth)}/s / {_size(bandwidth / 10)}/s "
            f"| {events:,.0f} | {rate * cpu_us / 1e6:.2f} | {rate * web_us / 1e6:.2f} |"
        )
    return "\n".join(rows)


def _capacity() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(CAPACITY.read_text())
    return loaded


def _results() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(RESULTS.read_text())
    return loaded


SECTIONS: dict[str, tuple[Path, Callable[[], str]]] = {
    "settings": (DOCS / "settings.md", settings_table),
    "metrics": (DOCS / "telemetry.md", metrics_table),
    "performance": (DOCS / "performance.md", lambda: performance(_results())),
    "capacity": (
        DOCS / "operations.md",
        lambda: capacity(_capacity(), _results(), Settings.model_fields["task_state_ttl_seconds"].default),
    ),
}


def rendered(path: Path) -> str:
    """The page at ``path`` with each of its generated regions written anew."""

    def fill(match: re.Match[str]) -> str:
        page, make = SECTIONS[match["name"]]
        assert page == path, f"{match['name']} belongs in {page.name}"
        return f"{match[1]}{make()}\n{match[3]}"

    return REGION.sub(fill, path.read_text())


def pages() -> list[Path]:
    return sorted({page for page, _ in SECTIONS.values()})


def main() -> None:
    for page in pages():
        page.write_text(rendered(page))


if __name__ == "__main__":
    main()
