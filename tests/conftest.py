from collections.abc import Iterator

import pytest
from xdist.remote import Producer
from xdist.scheduler import LoadScopeScheduling

from harness import TOKEN, Gunicorn, OtlpReceiver, SentryIngest, Stack, started

MAX_MESSAGE_LENGTH = 200
EMAIL_SEND_SECONDS = 1.0


class _ByModuleAndBackend(LoadScopeScheduling):
    """pytest-xdist's workers get a module's tests together, so each module-scoped server starts
    once, but the queue tests by backend: they are the longest part, one broker and worker each."""

    def _split_scope(self, nodeid: str) -> str:
        module, _, test = nodeid.partition("::")
        if module.endswith("test_queue.py") and "[" in test:
            library, broker = test.partition("[")[2].split("-")[:2]  # the queue fixture's id comes first
            return f"{module}[{library}-{broker}]"
        return module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Producer) -> LoadScopeScheduling:
    return _ByModuleAndBackend(config, log)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """gunicorn serving the template plus a user's own routes, with Sentry and OTLP export on."""
    sentry, otlp = SentryIngest(), OtlpReceiver()
    server = Gunicorn(
        tmp_path_factory.mktemp("stack"),
        env={
            "API_TOKEN": TOKEN,
            "EMAIL_SEND_SECONDS": str(EMAIL_SEND_SECONDS),
            "MAX_MESSAGE_LENGTH": str(MAX_MESSAGE_LENGTH),
            "SENTRY_DSN": sentry.dsn,
            "SENTRY_ENVIRONMENT": "test",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_SERVICE_NAME": "background-tasks-test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        app="tests.user_app:create()",
    )
    try:
        for running in started(server):
            yield Stack(server=running, sentry=sentry, otlp=otlp)
    finally:
        sentry.server.stop()
        otlp.server.stop()
