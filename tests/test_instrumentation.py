"""opentelemetry-instrumentation-fastapi makes the server span, and every task keeps exactly one span,
whatever the order in which the instrumentation and the task wrapper are installed."""

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import fastapi.background
import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from starlette.background import BackgroundTask, BackgroundTasks

from app.main import create_app
from app.observability.task_wrapper import _observed_call
from app.settings import Settings
from app.tasks import LogFile, write_log
from harness import TOKEN, Gunicorn, OtlpReceiver, Span, trace_id_of, wait_for

SERVER = 2
# Collected before any test runs create_app: what a fresh process starts with.
_STARLETTE_CALLS = {cls: cls.__call__ for cls in (BackgroundTask, BackgroundTasks, fastapi.background.BackgroundTasks)}


@pytest.fixture(autouse=True)
def fresh_process() -> Iterator[None]:
    """Each test starts from Starlette's own methods, as a new process would, and leaves them so."""
    assert BackgroundTask.__call__.__module__ == "starlette.background" or "_otel_original_call" in vars(BackgroundTask)

    def reset() -> None:
        for cls, call in _STARLETTE_CALLS.items():
            cls.__call__ = call  # type: ignore[method-assign]
        if "_otel_original_call" in vars(BackgroundTask):
            del BackgroundTask._otel_original_call  # type: ignore[attr-defined]

    reset()
    yield
    reset()


def _with_audit_route(app: FastAPI, log_file: Path) -> FastAPI:
    log = LogFile(log_file)

    @app.post("/audit/")
    def audit(note: str) -> JSONResponse:  # a Response(background=BackgroundTask(...)) on its own
        return JSONResponse({"status": "audited"}, background=BackgroundTask(write_log, log, f"audit {note}"))

    return app


def _spans(
    tmp_path: Path, before: Callable[[], None] = lambda: None, after: Callable[[FastAPI], None] = lambda _: None
) -> dict[str, list[Span]]:
    """Per route, the spans of one request to the app create_app builds, between the given steps
    (found by the traceparent header), and under "all" every span exported."""
    otlp = OtlpReceiver()
    try:
        before()
        settings = Settings(log_file=tmp_path / "tasks.log", otel_exporter_otlp_endpoint=otlp.endpoint, api_token=TOKEN)
        app = _with_audit_route(create_app(settings), tmp_path / "tasks.log")
        after(app)

        async def run() -> dict[str, str]:
            async with app.router.lifespan_context(app):  # starts the export; its end flushes it
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                    traces = {}
                    for path, params in (("/log/", {"msg": "one span"}), ("/audit/", {"note": "one span"})):
                        response = await client.post(path, params=params)
                        assert response.status_code == 200
                        traces[path] = response.headers.get("traceparent", "00-none-").split("-")[1]
                    return traces

        traces = anyio.run(run)
        return {"all": list(otlp.spans)} | {path: otlp.trace(trace_id) for path, trace_id in traces.items()}
    finally:
        otlp.server.stop()


def _assert_one_server_span_and_one_task_span(spans: dict[str, list[Span]]) -> None:
    for path, task in (("/log/", "write_log"), ("/audit/", "write_log")):
        assert sorted(s.name for s in spans[path]) == sorted([f"POST {path}", f"BackgroundTask {task}"]), path
        (server,) = [s for s in spans[path] if s.kind == SERVER]
        (task_span,) = [s for s in spans[path] if s.kind != SERVER]
        assert task_span.parent_span_id == server.span_id
        assert task_span.attributes["background_task.outcome"] == "success"


def test_the_instrumentation_installed_first_leaves_one_span_per_task(tmp_path: Path) -> None:
    def instrument_another_app_first() -> None:
        FastAPIInstrumentor.instrument_app(FastAPI(), tracer_provider=TracerProvider())
        assert BackgroundTask.__call__.__name__ == "traced_call"  # its own task span, before ours

    _assert_one_server_span_and_one_task_span(_spans(tmp_path, before=instrument_another_app_first))
    assert BackgroundTask.__call__ is _observed_call


def test_the_instrumentation_installed_after_leaves_one_span_per_task(tmp_path: Path) -> None:
    def instrument_another_app_after(app: FastAPI) -> None:
        FastAPIInstrumentor.instrument_app(FastAPI(), tracer_provider=TracerProvider())

    _assert_one_server_span_and_one_task_span(_spans(tmp_path, after=instrument_another_app_after))
    assert BackgroundTask.__call__ is _observed_call


def test_after_uninstrument_app_the_wrapper_stays_and_the_server_span_goes(tmp_path: Path) -> None:
    spans = _spans(tmp_path, after=FastAPIInstrumentor.uninstrument_app)
    assert BackgroundTask.__call__ is _observed_call
    assert [s.name for s in spans["all"]] == ["BackgroundTask write_log"] * 2  # one per request


STABLE = {"http.request.method": "POST", "url.scheme": "http", "network.protocol.version": "1.1"}
OLD = {"http.method": "POST", "http.scheme": "http", "http.flavor": "1.1"}


@pytest.mark.parametrize(("opt_in", "expected"), [("http", STABLE), (None, OLD)], ids=["stable", "old-conventions"])
def test_under_opentelemetry_instrument_nothing_is_instrumented_twice(
    tmp_path: Path, opt_in: str | None, expected: dict[str, str]
) -> None:
    """The zero-code run: the app it instrumented with its defaults is instrumented with ours. Its
    instrumentation fixes the conventions before the app exists: the image sets the opt-in; without
    it the old names come, and still no query string."""
    otlp = OtlpReceiver()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100", "EMAIL_SEND_SECONDS": "0"}
    server = Gunicorn(tmp_path, env=env | ({"OTEL_SEMCONV_STABILITY_OPT_IN": opt_in} if opt_in else {}), workers=1)
    instrument = shutil.which("opentelemetry-instrument", path=str(Path(sys.executable).parent))
    assert instrument is not None
    server.args = [instrument, *server.args]
    try:
        server.start()
        with server.client() as client:
            responses = [
                client.post("/log/", params={"msg": "zero-code"}),
                client.post("/send-mail/", params={"email": "zero-code@example.com"}),
            ]
        for response in responses:
            wait_for(lambda r=response: len(otlp.trace(trace_id_of(r))) >= 2, what="the spans")
        time.sleep(0.5)  # a duplicate span would arrive in the same or the next export
        traced = [otlp.trace(trace_id_of(response)) for response in responses]
    finally:
        server.stop()
        otlp.server.stop()
    assert "Attempting to instrument FastAPI app while already instrumented" not in server.stderr()
    for spans, (path, task) in zip(traced, [("/log/", "write_log"), ("/send-mail/", "send_email")], strict=True):
        assert sorted(s.name for s in spans) == sorted([f"POST {path}", f"BackgroundTask {task}"])
        (server_span,) = [s for s in spans if s.kind == SERVER]
        status = "http.response.status_code" if opt_in else "http.status_code"
        assert server_span.attributes == expected | {"http.route": path, status: 200}  # only the allowed ones
