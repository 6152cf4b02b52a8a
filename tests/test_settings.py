"""Settings fail loudly, name the variable, and never echo a secret."""

import pytest
from pydantic import ValidationError

from app.queues.rabbitmq import virtual_host
from app.queues.registry import QUEUE_LIBRARIES
from app.settings import Settings, describe_error


def _error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_error(caught.value)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_TOKEN", "SENTRY_DSN", "OTEL_EXPORTER_OTLP_ENDPOINT", "PORT", "EMAIL_SEND_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.api_token is None
    assert settings.sentry_dsn is None
    assert settings.otel_exporter_otlp_endpoint is None
    assert (settings.port, settings.web_concurrency, settings.email_send_seconds) == (8000, 2, 5.0)


def test_empty_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENTRY_DSN", "")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
    settings = Settings()
    assert settings.sentry_dsn is None
    assert settings.otel_exporter_otlp_endpoint is None


@pytest.mark.parametrize("token", ["test123", "changeme", "short-token"])
def test_weak_tokens_are_refused_without_echo(monkeypatch: pytest.MonkeyPatch, token: str) -> None:
    message = _error(monkeypatch, API_TOKEN=token)
    assert message.startswith("Invalid settings:\n  API_TOKEN: ")
    assert token not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "70000"),
        ("EMAIL_SEND_SECONDS", "-1"),
        ("MAX_MESSAGE_LENGTH", "lots"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("LOG_LEVEL", "LOUD"),
        ("METRICS_TOKEN", "changeme"),
        ("TELEMETRY_INCLUDE_PII", "maybe"),
        ("EMAIL_MAX_ATTEMPTS", "0"),
        ("EMAIL_RETRY_BACKOFF_SECONDS", "0"),
        ("TASK_STATE_URL", "amqp://rabbitmq:5672//"),
        ("TASK_STATE_TTL_SECONDS", "5"),
    ],
)
def test_bad_values_name_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    assert f"\n  {name}: " in _error(monkeypatch, **{name: value})


def test_case_is_forgiven(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "ParentBased_TraceIdRatio")
    settings = Settings()
    assert settings.log_level == "DEBUG"
    assert settings.otel_traces_sampler == "parentbased_traceidratio"


@pytest.mark.parametrize(
    ("env", "names"),
    [
        pytest.param(
            {"BROKER_URL": "amqp://guest:guest@rabbitmq:5672//", "TASK_QUEUE": "rq"},
            ("TASK_QUEUE=rq", "BROKER_URL"),
            marks=pytest.mark.skipif("rq" not in QUEUE_LIBRARIES, reason="rq is not registered"),
        ),
        ({"BROKER_URL": "redis://redis:6379/0", "TASK_QUEUE": "huey"}, ("TASK_QUEUE='huey'", "BROKER_URL")),
        ({"TASK_QUEUE": "huey"}, ("TASK_QUEUE='huey'", "BROKER_URL")),
        ({"BROKER_URL": "kafka://broker:9092"}, ("BROKER_URL",)),
    ],
)
def test_a_queue_that_cannot_work_fails_in_one_line_naming_both_settings(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: tuple[str, ...]
) -> None:
    message = _error(monkeypatch, **env)
    first, line = message.splitlines()
    assert first == "Invalid settings:"
    assert all(name in line for name in names)


def test_celery_broker_url_is_another_name_for_broker_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://redis:6379/0")
    settings = Settings()
    assert str(settings.broker_url) == "redis://redis:6379/0"
    assert (settings.task_queue, settings.broker_on_redis) == ("celery", True)
    monkeypatch.setenv("BROKER_URL", "amqp://rabbitmq:5672//")
    monkeypatch.setenv("TASK_QUEUE", "dramatiq")
    settings = Settings()
    assert (settings.broker_url is not None and settings.broker_url.scheme, settings.broker_on_redis) == ("amqp", False)


@pytest.mark.parametrize(
    ("broker_url", "vhost"),
    [
        ("amqp://guest:guest@rabbitmq:5672//", "/"),
        ("amqp://rabbitmq", "/"),
        ("amqps://app:s3cret@mq.example.com:5671/orders", "orders"),
        ("amqp://app:pw@mq:5672/%2Fteam", "/team"),
    ],
)
def test_the_rabbitmq_virtual_host_follows_the_broker_url(broker_url: str, vhost: str) -> None:
    assert virtual_host(Settings(broker_url=broker_url, task_queue="dramatiq")) == vhost


@pytest.mark.parametrize(
    ("broker_url", "task_state_url", "where"),
    [
        (None, "redis://state:6379/1", None),  # in-process tasks have no state
        ("redis://redis:6379/0", None, "redis://redis:6379/0"),
        ("redis://redis:6379/0", "redis://state:6379/1", "redis://state:6379/1"),
        ("amqp://rabbitmq:5672//", None, None),  # off: the endpoints say so
        ("amqp://rabbitmq:5672//", "redis://state:6379/1", "redis://state:6379/1"),
    ],
)
def test_task_state_lives_in_a_redis_broker_or_task_state_url(
    broker_url: str | None, task_state_url: str | None, where: str | None
) -> None:
    settings = Settings(broker_url=broker_url, task_state_url=task_state_url, task_queue="dramatiq")
    assert settings.task_state_redis == where
