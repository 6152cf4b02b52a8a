"""Sentry alerts as code: the bodies against the schema, `make sentry-alerts` against a stand-in for
Sentry's API, and the grouping and tags of real events captured from the running service."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import jsonschema
import pytest

from harness import ROOT, Stack, wait_for

SENTRY_DIR = ROOT / "deploy" / "sentry"
SCHEMA = json.loads((SENTRY_DIR / "schema.json").read_text())
APPLY = SENTRY_DIR / "apply.py"
TOKEN = "sntrys_test-token"
ORG, PROJECT = "acme", "shop"
FAKE_IDS = {"project_id": "42", "issue_stream_detector": "7", "team:backend": "5"}


def _definitions() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.parent.name}/{path.name}", json.loads(path.read_text()))
        for kind in ("monitors", "alerts")
        for path in sorted((SENTRY_DIR / kind).glob("*.json"))
    ]


def _load_apply() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sentry_apply", APPLY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


apply = _load_apply()


def _resolved(body: Any) -> Any:
    """A body with its placeholders resolved by apply.py's own code, against fake ids and the defaults."""

    def lookup(name: str) -> Any:
        if name.startswith("env:"):
            return apply.from_env(name.removeprefix("env:"))
        return FAKE_IDS.get(name, "99")

    return apply.resolve(body, lookup)


def _errors(body: Any) -> list[str]:
    return [e.message for e in jsonschema.Draft202012Validator(SCHEMA).iter_errors(body)]


def test_every_definition_validates_against_the_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    definitions = _definitions()
    assert {name for name, _ in definitions} == {
        "monitors/background-task-errors.json",
        "alerts/new-or-regressed.json",
        "alerts/failing-often.json",
        "alerts/errors-high.json",
    }
    for name, body in definitions:
        assert _errors(_resolved(body)) == [], name


@pytest.mark.parametrize(
    ("name", "path", "value"),
    [
        (
            "an interval Sentry's server refuses",
            ["actionFilters", 0, "conditions", 1, "comparison", "interval"],
            "5min",
        ),
        ("a value on a tag match 'is'", ["actionFilters", 0, "conditions", 0, "comparison", "value"], "yes"),
        ("a frequency that is not allowed", ["config", "frequency"], 15),
    ],
)
def test_a_wrong_alert_body_is_refused(name: str, path: list[Any], value: Any) -> None:
    body = _resolved(json.loads((SENTRY_DIR / "alerts" / "failing-often.json").read_text()))
    target = body
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert _errors(body), name


def test_a_monitor_window_in_minutes_is_refused() -> None:
    body = _resolved(json.loads((SENTRY_DIR / "monitors" / "background-task-errors.json").read_text()))
    assert body["dataSources"][0]["timeWindow"] == 300  # five minutes, in seconds
    body["dataSources"][0]["timeWindow"] = 5
    assert _errors(body)


# --- a stand-in for Sentry's API ----------------------------------------------------------------


class SentryApi:
    """Answers the alerting API as Sentry's API reference documents it, for one org with two projects,
    and records every call: monitors and alerts under the organization, every list paginated with a
    Link header and a cursor, and a 404 for the project-level detectors path of older Sentry versions."""

    PER_PAGE = 100  # Sentry's default page size

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        self.detectors: dict[str, dict[str, Any]] = {
            # Another project's issue stream, listed first when a list is not filtered by project.
            "6": {"id": "6", "projectId": "43", "name": "Issue Stream", "type": "issue_stream"},
            "7": {"id": "7", "projectId": "42", "name": "Issue Stream", "type": "issue_stream"},
        }
        self.workflows: dict[str, dict[str, Any]] = {
            "3": {"id": "3", "name": "Someone else's alert", "detectorIds": ["7"]}
        }
        self.teams = [{"id": "5", "slug": "backend"}, {"id": "6", "slug": "frontend"}]
        self.lock = threading.Lock()
        self._ids = iter(range(1_000, 100_000))
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                api.handle(self)

            def do_POST(self) -> None:
                api.handle(self)

            def do_PUT(self) -> None:
                api.handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def writes(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path, _, _ in self.calls if method != "GET"]

    def add_workflows(self, count: int) -> None:
        """Other teams' alerts, older than ours, so that ours land on a later page."""
        for _ in range(count):
            workflow_id = str(next(self._ids))
            self.workflows[workflow_id] = {"id": workflow_id, "name": f"Team alert {workflow_id}", "detectorIds": ["6"]}

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length", 0))
        body = json.loads(request.rfile.read(length)) if length else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        url = urllib.parse.urlsplit(request.path)
        query = urllib.parse.parse_qs(url.query)
        with self.lock:
            self.calls.append((request.command, request.path, headers, body))
            status, reply, link = self._route(request.command, url.path, query, headers, body)
        data = json.dumps(reply).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        if link:
            request.send_header("Link", link)
        request.end_headers()
        request.wfile.write(data)

    def _route(  # noqa: PLR0911 - one return per documented endpoint
        self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: Any
    ) -> tuple[int, Any, str]:
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"detail": "Invalid token"}, ""
        org = f"/api/0/organizations/{ORG}"
        lists: dict[str, Any] = {
            f"{org}/detectors/": lambda: [
                d for d in self.detectors.values() if "project" not in query or d["projectId"] in query["project"]
            ],
            f"{org}/workflows/": lambda: list(self.workflows.values()),
            f"{org}/teams/": lambda: self.teams,
        }
        if method == "GET" and path == f"/api/0/projects/{ORG}/{PROJECT}/":
            return 200, {"id": "42", "slug": PROJECT}, ""
        if method == "GET" and path in lists:
            return self._page(path, lists[path](), query)
        if method == "POST" and path == f"{org}/detectors/":
            if body.get("projectId") not in {"42", "43"}:
                return 400, {"projectId": ["Project not found"]}, ""
            return self._create(self.detectors, body)
        if method == "POST" and path == f"{org}/workflows/":
            return self._create(self.workflows, body)
        for prefix, store in ((f"{org}/detectors/", self.detectors), (f"{org}/workflows/", self.workflows)):
            object_id = path.removeprefix(prefix).rstrip("/")
            if method == "PUT" and path.startswith(prefix) and object_id in store:
                errors = _errors(body)
                if errors:
                    return 400, {"detail": errors}, ""
                store[object_id] = {**copy.deepcopy(body), "id": object_id}
                return 200, store[object_id], ""
        return 404, {"detail": "The requested resource does not exist"}, ""

    def _page(self, path: str, items: list[Any], query: dict[str, list[str]]) -> tuple[int, Any, str]:
        """One page, in id order, and Sentry's Link header: previous and next, each with results and cursor."""
        offset = int(query.get("cursor", ["0:0:0"])[0].split(":")[1])
        items = sorted(items, key=lambda item: int(item["id"]))
        page = items[offset : offset + self.PER_PAGE]
        previous, following = max(offset - self.PER_PAGE, 0), offset + self.PER_PAGE

        def link(rel: str, cursor: str, results: bool) -> str:
            url = f"{self.url.rstrip('/')}{path}?&cursor={cursor}"
            return f'<{url}>; rel="{rel}"; results="{str(results).lower()}"; cursor="{cursor}"'

        links = [
            link("previous", f"0:{previous}:1", offset > 0),
            link("next", f"0:{following}:0", following < len(items)),
        ]
        return 200, page, ", ".join(links)

    def _create(self, store: dict[str, dict[str, Any]], body: Any) -> tuple[int, Any, str]:
        errors = _errors(body)
        if errors:
            return 400, {"detail": errors}, ""
        object_id = str(next(self._ids))
        store[object_id] = {**copy.deepcopy(body), "id": object_id}
        return 201, store[object_id], ""


@pytest.fixture
def api() -> Iterator[SentryApi]:
    server = SentryApi()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()


def _apply(api: SentryApi, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SENTRY_")},
        "SENTRY_AUTH_TOKEN": TOKEN,
        "SENTRY_ORG": ORG,
        "SENTRY_PROJECT": PROJECT,
        "SENTRY_URL": api.url,
        **env,
    }
    return subprocess.run(
        [sys.executable, str(APPLY), *args], env=environment, capture_output=True, text=True, timeout=60, check=False
    )


def test_apply_creates_everything_then_changes_nothing_then_one_put_per_change(api: SentryApi) -> None:
    first = _apply(api)
    assert first.returncode == 0, first.stderr
    assert sorted(api.writes()) == sorted(
        [("POST", f"/api/0/organizations/{ORG}/detectors/")] + [("POST", f"/api/0/organizations/{ORG}/workflows/")] * 3
    )
    monitor = next(d for d in api.detectors.values() if d["name"].startswith("[background-tasks]"))
    assert monitor["projectId"] == "42"
    by_name = {w["name"]: w for w in api.workflows.values()}
    assert by_name["[background-tasks] Background task errors are high"]["detectorIds"] == [monitor["id"]]
    assert by_name["[background-tasks] A background task fails in a new way, or again"]["detectorIds"] == ["7"]
    assert by_name["Someone else's alert"] == {"id": "3", "name": "Someone else's alert", "detectorIds": ["7"]}
    for _method, _path, headers, _body in api.calls:
        assert headers["authorization"] == f"Bearer {TOKEN}"
    assert not any("/rules/" in path or "/alert-rules/" in path for _, path, _, _ in api.calls)
    assert not any(path.startswith("/api/0/projects/") and "/detectors/" in path for _, path, _, _ in api.calls)

    written = len(api.writes())
    second = _apply(api)
    assert second.returncode == 0, second.stderr
    assert len(api.writes()) == written  # nothing changed
    assert "0 changed" in second.stdout

    third = _apply(api, SENTRY_ISSUE_EVENTS_5M="200")
    assert third.returncode == 0, third.stderr
    (put,) = api.writes()[written:]
    failing_often = by_name["[background-tasks] One background task is failing often"]
    assert put == ("PUT", f"/api/0/organizations/{ORG}/workflows/{failing_often['id']}/")
    assert api.workflows[failing_often["id"]]["actionFilters"][0]["conditions"][1]["comparison"]["value"] == 200


def test_every_page_is_read_so_a_large_organization_gets_no_second_copy(api: SentryApi) -> None:
    api.add_workflows(150)  # other teams' alerts, on other projects: ours land on the second page
    # Same name as one of ours, but on another project's monitor: that project's, not ours.
    api.workflows["999"] = {
        "id": "999",
        "name": "[background-tasks] A background task fails in a new way, or again",
        "detectorIds": ["6"],
    }
    before = copy.deepcopy(api.workflows)
    first = _apply(api)
    assert first.returncode == 0, first.stderr
    assert len(api.writes()) == 4
    assert all(api.workflows[key] == value for key, value in before.items())  # nothing of theirs touched
    assert len(api.workflows) == len(before) + 3

    start = len(api.calls)
    second = _apply(api)
    assert second.returncode == 0, second.stderr
    assert len(api.writes()) == 4
    assert "0 changed" in second.stdout
    pages = [path for method, path, _, _ in api.calls[start:] if method == "GET" and "/workflows/" in path]
    assert pages == [
        f"/api/0/organizations/{ORG}/workflows/",
        f"/api/0/organizations/{ORG}/workflows/?cursor=0%3A100%3A0",
    ]
    detectors = [path for method, path, _, _ in api.calls[start:] if method == "GET" and "/detectors/" in path]
    assert detectors == [f"/api/0/organizations/{ORG}/detectors/?project=42"]


def test_a_duplicate_of_ours_is_named_and_left_alone(api: SentryApi) -> None:
    assert _apply(api).returncode == 0
    mine = next(w for w in api.workflows.values() if w["name"].endswith("fails in a new way, or again"))
    api.workflows["99999"] = {**copy.deepcopy(mine), "id": "99999"}
    written = len(api.writes())
    again = _apply(api)
    assert again.returncode == 0, again.stderr
    assert len(api.writes()) == written
    assert f"duplicate  {mine['name']}: id 99999 is not managed; {mine['id']} is (delete the other)" in again.stdout


def test_the_stand_in_refuses_the_project_level_monitor_path(api: SentryApi) -> None:
    """Sentry's current URL configuration has no /projects/{org}/{project}/detectors/: a client on it fails here."""
    request = urllib.request.Request(
        f"{api.url}api/0/projects/{ORG}/{PROJECT}/detectors/", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    refused.value.close()
    assert refused.value.code == 404


def test_dry_run_prints_the_bodies_and_sends_nothing(api: SentryApi) -> None:
    result = _apply(api, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert api.writes() == []
    assert result.stdout.count("would POST") == 4
    assert '"interval": "5m"' in result.stdout
    assert "4 to change" in result.stdout


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SENTRY_AUTH_TOKEN": "wrong"}, "sentry-alerts: Sentry refused the token (401): check SENTRY_AUTH_TOKEN\n"),
        ({"SENTRY_AUTH_TOKEN": ""}, "sentry-alerts: SENTRY_AUTH_TOKEN not set\n"),
        (
            {"SENTRY_ORG": "nobody"},
            "sentry-alerts: GET /api/0/projects/nobody/shop/: not found (404): "
            "check SENTRY_ORG, SENTRY_PROJECT and SENTRY_URL\n",
        ),
        ({"SENTRY_URL": "http://127.0.0.1:9/"}, "sentry-alerts: cannot reach http://127.0.0.1:9 ("),
    ],
)
def test_a_bad_token_or_org_gets_one_clear_line(api: SentryApi, env: dict[str, str], message: str) -> None:
    result = _apply(api, **env)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert api.writes() == []


# --- the real events: grouping, and the tag keys the alerts filter on ---------------------------


def _failure_events(stack: Stack, path: str, params: dict[str, Any], task: str, exception: str) -> list[dict[str, Any]]:
    with stack.server.client() as client:
        assert client.post(path, params=params).status_code == 200

    def arrived() -> list[dict[str, Any]]:
        return [
            e
            for e in stack.sentry.events_tagged("background_task", task)
            if e["exception"]["values"][-1]["type"] == exception
        ]

    return list(wait_for(arrived, what=f"the {task} {exception} event"))


def test_one_sentry_issue_per_task_and_exception_class(stack: Stack) -> None:
    seen = {
        (task, exception): _failure_events(stack, path, params, task, exception)[-1]["fingerprint"]
        for path, params, task, exception in [
            ("/imports/", {"count": -1}, "import_rows", "ValueError"),
            ("/exports/", {"count": -1}, "export_rows", "ValueError"),  # same class, another task
            ("/imports/", {"count": 10**7}, "import_rows", "OverflowError"),  # same task, another class
        ]
    }
    assert seen == {
        ("import_rows", "ValueError"): ["background-task", "import_rows", "ValueError"],
        ("export_rows", "ValueError"): ["background-task", "export_rows", "ValueError"],
        ("import_rows", "OverflowError"): ["background-task", "import_rows", "OverflowError"],
    }
    # The same failure again joins its issue.
    time.sleep(0.1)
    again = _failure_events(stack, "/imports/", {"count": -2}, "import_rows", "ValueError")
    assert {tuple(e["fingerprint"]) for e in again} == {("background-task", "import_rows", "ValueError")}


def _filtered_tag_keys() -> set[str]:
    keys = set()
    for _name, body in _definitions():
        keys |= {
            c["comparison"]["key"]
            for f in body.get("actionFilters", [])
            for c in f["conditions"]
            if c["type"] == "tagged_event"
        }
        for source in body.get("dataSources", []):
            keys |= {term.removeprefix("has:") for term in source["query"].split() if term.startswith("has:")}
    return keys


def test_the_alerts_filter_on_tags_that_real_task_events_carry(stack: Stack) -> None:
    (event, *_) = _failure_events(
        stack, "/orders/", {"email": "tags@example.com", "order_id": "t1"}, "charge_card", "PaymentDeclinedError"
    )
    keys = _filtered_tag_keys()
    assert keys == {"background_task"}
    assert keys <= set(event["tags"])
