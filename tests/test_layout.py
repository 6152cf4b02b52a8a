"""The seam holds: only a queue adapter imports its library, and a task has one name everywhere."""

import ast
import functools
from pathlib import Path

from app.observability.task_wrapper import task_name
from app.queues.celery.app import create_celery
from app.settings import Settings
from app.task_registry import named, task_registry
from app.tasks import write_log
from harness import ROOT

QUEUE_LIBRARIES = {"celery", "kombu", "billiard", "dramatiq", "rq", "redis", "pika", "amqp"}
# Each library's adapter, and the libraries it may import: its own, and the broker clients.
ADAPTERS = {
    "celery": {"celery", "kombu", "redis"},
    "dramatiq": {"dramatiq", "redis", "pika"},
    "rq": {"rq", "redis"},
    "task_states.py": {"redis"},  # every library's task state, in Redis
}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_a_queue_adapter_imports_its_library() -> None:
    importers: dict[str, set[str]] = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        for library in _imported_roots(path) & QUEUE_LIBRARIES:
            importers.setdefault(library, set()).add(str(path.relative_to(ROOT)))
    assert importers.keys() == {"celery", "kombu", "dramatiq", "rq", "redis", "pika"}
    for library, paths in importers.items():
        owners = {path.split("/")[2] for path in paths}  # app/queues/<adapter>/… or app/queues/<module>
        assert all(path.startswith("app/queues/") for path in paths), (library, paths)
        assert all(library in ADAPTERS[owner] for owner in owners), (library, paths)
    observability = ROOT / "app" / "observability"
    assert not any(_imported_roots(path) & QUEUE_LIBRARIES for path in observability.rglob("*.py"))
    # Nor does observability reach a queue library through OpenTelemetry's instrumentation of it.
    assert not any("opentelemetry.instrumentation.celery" in p.read_text() for p in observability.rglob("*.py"))


def test_a_task_carries_its_registry_name_in_every_mode() -> None:
    welcome = named(functools.partial(write_log, None), "welcome")
    assert task_name(welcome) == "welcome"  # in-process: the label, span attribute, Sentry tag and log
    celery = create_celery(Settings(broker_url="redis://127.0.0.1:1/0"), {"welcome": welcome}, producer=True)
    assert celery.tasks["welcome"].name == "welcome"  # queued: the same
    assert [task_name(func) for func in task_registry(Settings()).values()] == list(task_registry(Settings()))
