"""The seam holds: only a queue adapter imports its library, every adapter package has the same
files, no import circles, the web side loads no worker code and a worker no web framework, and a
task has one name everywhere."""

import ast
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from app.observability.task_wrapper import task_name
from app.queues.registry import QUEUE_LIBRARIES
from app.settings import Settings
from app.task_registry import RegisteredTask, task_registry
from app.tasks import write_log
from harness import ROOT, Gunicorn

QUEUE_CLIENTS = {"celery", "kombu", "billiard", "dramatiq", "rq", "redis", "pika", "amqp"}
# Each library's adapter, and the libraries it may import: its own, and the broker clients.
ADAPTERS = {
    "celery": {"celery", "kombu", "redis"},
    "dramatiq": {"dramatiq", "redis", "pika"},
    "rq": {"rq", "redis"},
    "task_states.py": {"redis"},  # every library's task state, in Redis
    "redis_depth.py": {"redis"},  # every library's queue depth on Redis
    "redis_client.py": {"redis"},  # every Redis client of the template (RQ's connection class too)
}
# The files of every queue package, each with one role (docs/architecture.md).
PACKAGE_FILES = {"__init__.py", "names.py", "client.py", "producer.py", "consumer.py", "worker.py", "adapter.py"}
WEB_FRAMEWORKS = {"fastapi", "starlette", "anyio"}


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
        for library in _imported_roots(path) & QUEUE_CLIENTS:
            importers.setdefault(library, set()).add(str(path.relative_to(ROOT)))
    assert importers.keys() == set().union(*(ADAPTERS[name] for name in QUEUE_LIBRARIES))
    for library, paths in importers.items():
        owners = {path.split("/")[2] for path in paths}  # app/queues/<adapter>/… or app/queues/<module>
        assert all(path.startswith("app/queues/") for path in paths), (library, paths)
        assert all(library in ADAPTERS[owner] for owner in owners), (library, paths)
    observability = ROOT / "app" / "observability"
    assert not any(_imported_roots(path) & QUEUE_CLIENTS for path in observability.rglob("*.py"))
    # Nor does observability reach a queue library through OpenTelemetry's instrumentation of it.
    assert not any("opentelemetry.instrumentation.celery" in p.read_text() for p in observability.rglob("*.py"))


def test_a_task_carries_its_registry_name_in_every_mode() -> None:
    welcome = RegisteredTask("welcome", functools.partial(write_log, None))
    assert task_name(welcome) == "welcome"  # in-process: the label, span attribute, Sentry tag and log
    if "celery" not in QUEUE_LIBRARIES:
        return
    from app.queues.celery.client import create_celery  # noqa: PLC0415 - where Celery is registered

    celery = create_celery(Settings(broker_url="redis://127.0.0.1:1/0"), {"welcome": welcome}, producer=True)
    assert celery.tasks["welcome"].name == "welcome"  # queued: the same
    assert [task_name(func) for func in task_registry(Settings()).values()] == list(task_registry(Settings()))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, at its top or inside a function, as a dotted name."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _graph() -> dict[str, set[str]]:
    """Each module of app/ and the modules of app/ it loads: those it imports, and their packages."""
    modules = {_module(path): path for path in (ROOT / "app").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        loaded = set()
        for imported in _imports(path):
            parts = imported.split(".")
            loaded |= {".".join(parts[:n]) for n in range(1, len(parts) + 1)} & modules.keys()
        graph[name] = loaded - {name}
    return graph


def _external(name: str) -> set[str]:
    """The top-level packages outside app/ that module ``name`` imports."""
    path = ROOT.joinpath(*name.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return {imported.split(".")[0] for imported in _imports(path)} - {"app"}


def _closure(graph: dict[str, set[str]], roots: set[str]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph[name])
    return seen


def test_every_queue_package_has_the_same_files() -> None:
    for library in QUEUE_LIBRARIES:
        package = ROOT / "app" / "queues" / library
        assert {path.name for path in package.glob("*.py")} == PACKAGE_FILES, library


def test_no_module_imports_itself_back() -> None:
    graph = _graph()
    for name in graph:
        # Every module that ``name`` loads, directly or not: ``name`` must not be among them.
        assert name not in _closure(graph, graph[name]), f"{name} imports itself back"


def test_the_web_side_loads_no_worker_code_and_a_worker_no_web_framework() -> None:
    graph = _graph()
    for library in QUEUE_LIBRARIES:
        package = f"app.queues.{library}"
        web = _closure(graph, {"app.main", f"{package}.adapter", f"{package}.producer"})
        assert not web & {f"{package}.consumer", f"{package}.worker", "app.queues.consumer", "app.worker_main"}
        worker = _closure(graph, {"app.worker_main", f"{package}.worker"})
        assert "app.main" not in worker
        for name in worker:
            assert not _external(name) & WEB_FRAMEWORKS, f"{name}, loaded by the {library} worker"


REMOVED = "rq"
# What the copy runs beside the removed backend's cases: the seam and settings, and the endpoint
# contract on a real gunicorn.
STILL_GREEN = ["tests/test_layout.py", "tests/test_settings.py", "tests/test_contract.py"]
COPY_IGNORED = (".venv", ".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "bench")


def test_a_backend_deleted_with_its_line_leaves_the_app_serving_and_its_tests_skipped(tmp_path: Path) -> None:
    """What docs/architecture.md says removes a backend, done on a copy of the tree."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    shutil.rmtree(tree / "app" / "queues" / REMOVED)
    registry = tree / "app" / "queues" / "registry.py"
    lines = registry.read_text().splitlines(keepends=True)
    kept = [line for line in lines if not line.lstrip().startswith(f'"{REMOVED}":')]
    assert len(kept) == len(lines) - 1  # the one line that registers it
    registry.write_text("".join(kept))

    # `make run` serves, the tasks in process.
    web = Gunicorn(tmp_path / "web", env={}, root=tree).start()
    try:
        with web.client() as client:
            assert client.post("/log/", params={"msg": "still here"}).status_code == 200
            assert client.get("/healthz").status_code == 200
    finally:
        web.stop()

    # Naming it fails at start, in one line, on both sides.
    env = {**os.environ, "BROKER_URL": "redis://127.0.0.1:1/0", "TASK_QUEUE": REMOVED}
    for command in (
        [sys.executable, "-m", "app.worker_main"],
        [sys.executable, "-m", "gunicorn", "-c", "deploy/gunicorn.conf.py"],
    ):
        ended = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert ended.returncode != 0
        (line,) = [json.loads(line) for line in ended.stderr.splitlines() if line.startswith("{")]
        assert f"TASK_QUEUE={REMOVED!r} is no queue library" in line["message"], line

    # The other backends' tests pass; the removed one's are skipped, saying why.
    def pytest_in_tree(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-n0", "-q", "-rs"]
        return subprocess.run([*command, *args], cwd=tree, capture_output=True, text=True, timeout=600, check=False)

    still = pytest_in_tree(*STILL_GREEN, "-k", "not deleted_with_its_line")
    assert still.returncode == 0, still.stdout[-3000:]
    skipped = pytest_in_tree("tests/test_queue.py", "-k", f"{REMOVED}-")
    assert skipped.returncode == 0, skipped.stdout[-3000:]
    assert f"{REMOVED} is not registered" in skipped.stdout
    assert " passed" not in skipped.stdout
    assert " failed" not in skipped.stdout
