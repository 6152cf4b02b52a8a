"""The docs cannot drift: their reference tables are the code's, every link and anchor resolves,
every alert's runbook is a section, and every Python block runs."""

import logging
import re
import unicodedata
from collections import Counter
from pathlib import Path
from types import ModuleType

import yaml

from app.observability import worker_metrics
from app.observability.metrics import CATALOGUE, Metrics
from app.settings import Settings
from docs import generate
from harness import PROMETHEUS_DIR, ROOT, Gunicorn, OtlpReceiver, wait_for

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUNBOOK_BASE = "https://github.com/your-org/background-tasks/blob/main/docs/operations.md"


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    found = set()
    for line in _prose(page.read_text()).splitlines():
        if match := re.match(r"#{1,6} (.+)", line):
            slug = _slug(match[1])
            found.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
    return found


def python_blocks(page: Path) -> list[str]:
    return [body for language, body in FENCE.findall(page.read_text()) if language == "python"]


def test_the_generated_parts_are_the_codes() -> None:
    for page in generate.pages():
        assert page.read_text() == generate.rendered(page), f"{page.name} is stale: run make docs"


def test_every_setting_and_metric_is_described_in_the_code_the_docs_are_written_from() -> None:
    assert all(field.description for field in Settings.model_fields.values())
    registered = {metric.name: metric.type for metric in Metrics().registry.collect()}
    depth = worker_metrics._QueueDepth("celery", lambda: worker_metrics.Depth(0, 0), logging.getLogger("test"))
    read_at_scrape = {metric.name: metric.type for metric in depth.collect()}
    # The kind the table shows is the kind the code builds.
    assert {spec.name: spec.kind for spec in CATALOGUE} == registered | read_at_scrape
    table = (ROOT / "docs" / "telemetry.md").read_text()
    assert all(f"| `{spec.exposed_name}` |" in table for spec in CATALOGUE)


def test_the_readme_is_an_entrance() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    two_commands = readme.split("## Two commands", 1)[1].split("##", 1)[0]
    (commands,) = [body for language, body in FENCE.findall(two_commands) if language == "sh"]
    assert [line.split()[:2] for line in commands.splitlines()] == [["make", "run"], ["make", "test"]]
    docs_list = readme.split("## The docs", 1)[1].split("##", 1)[0]
    assert LINK.findall(docs_list)[0] == "docs/architecture.md"


def test_every_internal_link_and_anchor_resolves() -> None:
    checked = 0
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # http(s) and mailto: offline, not checked
            path, _, anchor = target.partition("#")
            destination = (page.parent / path).resolve() if path else page
            assert destination.exists(), f"{page.name}: {target} names no file"
            if anchor:
                assert anchor in anchors(destination), f"{page.name}: {target} names no heading"
            checked += 1
    assert checked > 30


def test_every_alert_has_a_runbook_section() -> None:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    alerts = [rule for group in groups for rule in group["rules"] if "alert" in rule]
    sections = anchors(ROOT / "docs" / "operations.md")
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url == f"{RUNBOOK_BASE}#{alert['alert'].lower()}"
        assert alert["alert"].lower() in sections, alert["alert"]
    body = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        section = body.split(f"### {alert['alert']}\n", 1)[1].split("\n### ", 1)[0]
        assert "**Look first at**" in section, alert["alert"]
        assert "**What usually fixes it:**" in section, alert["alert"]


def _module(name: str, source: str, directory: Path) -> ModuleType:
    (directory / f"{name}.py").write_text(source)
    module = ModuleType(name)
    exec(compile(source, str(directory / f"{name}.py"), "exec"), module.__dict__)
    return module


def test_every_python_block_in_the_docs_runs(tmp_path: Path) -> None:
    tasks_page = ROOT / "docs" / "tasks.md"
    blocks = {page.name: python_blocks(page) for page in PAGES}
    assert {name: len(found) for name, found in blocks.items() if found} == {"tasks.md": 4}, "a block no test runs"
    light, registry, route, instrumentation = python_blocks(tasks_page)

    # The heavy task's registry: the template's send_email and the user's task, with its policy.
    tasks = _module("doc_registry", registry, tmp_path).task_registry(Settings())
    assert set(tasks) == {"send_email", "resize_image"}
    policy = tasks["resize_image"].retry
    assert policy is not None
    assert (policy.max_attempts, policy.first_backoff_seconds) == (5, 2)

    # The light task and the user's own instrumentation, served by gunicorn as the page says.
    serving = (
        f"{light}\n{instrumentation}\n{route}\n"
        "_build = build\n\n\n"
        "def served() -> FastAPI:\n"
        "    app = _build()\n"
        "    add_image_routes(app)  # the heavy route, in-process without a broker\n\n"
        "    @app.post('/thumbnails/{image_id}')\n"
        "    async def thumbnails(image_id: str, background_tasks: BackgroundTasks) -> dict[str, str]:\n"
        "        background_tasks.add_task(make_thumbnails, image_id)\n"
        "        return {'status': 'making'}\n\n"
        "    return app\n"
    )
    (tmp_path / "doc_example.py").write_text(serving)
    otlp = OtlpReceiver()
    env = {"PYTHONPATH": str(tmp_path), "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = Gunicorn(tmp_path / "web", env=env, app="doc_example:served()", workers=1).start()
    try:
        client = server.thread_client()
        assert client.post("/images/42/resize").json() == {"status": "resizing"}
        assert client.post("/images/not-an-id/resize").status_code == 200
        made = client.post("/thumbnails/7")
        assert made.status_code == 200
        task = {"task": "resize_image", "route": "/images/{image_id}/resize"}
        metrics = server.wait_for_metrics(
            lambda m: (
                m.get_value("background_task_failures_total", exception="ValueError", **task) == 1
                and m.get_value("background_task_duration_seconds_count", outcome="success", **task) == 1
                and m.get_value("background_task_duration_seconds_count", task="make_thumbnails") == 1
            ),
            "the three tasks",
        )
        assert metrics.get_value("images_thumbnails_total", size="small") == 1
        assert metrics.get_value("images_thumbnails_total", size="large") == 1
        trace_id = made.headers["traceparent"].split("-")[1]
        name = "BackgroundTask make_thumbnails"
        task_span = wait_for(
            lambda: next((span for span in otlp.trace(trace_id) if span.name == name), None), what="the task's span"
        )
        assert task_span.event_names == ["thumbnails written"]
        assert [span.name for span in otlp.trace(trace_id)].count(name) == 1
        (line,) = [line for line in server.app_logs() if line["message"] == "thumbnails written"]
        assert (line["logger"], line["thumbnails"], line["trace_id"]) == ("app.images", 2, trace_id)
    finally:
        server.stop()
        otlp.server.stop()
