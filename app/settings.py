"""The one typed settings object. Every value comes from the environment and fails loudly."""

import tempfile
from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    AnyUrl,
    Field,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.queues.registry import QUEUE_LIBRARIES

# Long enough to refuse the tutorial's "test123" and the usual placeholders ("changeme", "secret").
MIN_TOKEN_LENGTH = 16
# After the drain: time to flush spans and Sentry events before gunicorn's SIGKILL.
SHUTDOWN_FLUSH_SECONDS = 10
# After WORKER_SHUTDOWN_SECONDS, the time a queue library may take to hand back and close.
WORKER_STOP_GRACE_SECONDS = 10.0

BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps")

TracesSampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True, populate_by_name=True)

    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for `/notify/` and `/tasks/{id}`, at least 16 characters. Unset: they answer 401.",
    )
    api_username: str = Field(
        default="api-user",
        min_length=1,
        max_length=64,
        description="The name `/notify/` writes for the token's holder.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token that `GET /metrics` requires, the worker's too; at least 16 characters. "
        "Unset: `/metrics` is open.",
    )
    telemetry_include_pii: bool = Field(
        default=False,
        description="`true`: task arguments in spans (`background_task.arguments`), request data and local "
        "variables in Sentry events.",
    )
    log_file: Path = Field(default=Path("background-tasks.log"), description="Where the tasks append their lines.")
    email_send_seconds: float = Field(
        default=5.0, ge=0, le=3600, description="How long the simulated email send blocks."
    )
    email_failure_rate: float = Field(
        default=0.0, ge=0, le=1, description="Share of simulated sends that fail with `EmailDeliveryError`."
    )
    email_max_attempts: int = Field(
        default=3, ge=1, le=100, description="`send_email`'s attempts on `EmailDeliveryError`, the first included."
    )
    email_retry_backoff_seconds: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="The wait before `send_email`'s first retry; doubled after each, with jitter, capped at 300 s.",
    )
    max_message_length: int = Field(
        default=1000, ge=1, le=100_000, description="Longest `msg` or `message` accepted, in characters."
    )
    host: str = Field(default="127.0.0.1", description="Bind address of the web side and the worker's `/metrics`.")
    port: int = Field(default=8000, ge=1, le=65535, description="The web side's port.")
    web_concurrency: int = Field(default=2, ge=1, le=64, description="gunicorn's workers.")
    task_threads: int = Field(
        default=40, ge=1, le=1000, description="Threads for sync in-process tasks, apart from those of sync endpoints."
    )
    max_pending_tasks: int = Field(
        default=1000,
        ge=1,
        le=1_000_000,
        description="Per web worker: with this many tasks pending, routes that schedule tasks answer 503.",
    )
    retry_after_seconds: int = Field(default=2, ge=1, le=3600, description="The `Retry-After` of a 503.")
    drain_seconds: float = Field(
        default=20.0,
        ge=0,
        le=3600,
        description="How long a stopping web worker lets its pending tasks run; gunicorn's graceful timeout is "
        "this + 10.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="The app's log lines (`DEBUG` adds one per successful task); the servers' and libraries' "
        "log at this or `INFO`, whichever is higher.",
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="`text`: one readable line per record, for a terminal."
    )
    access_log: bool = Field(
        default=False,
        description="`true`: a line per request (`app.access`): method, route template, status, duration; "
        "never the path or query string.",
    )

    # The queue (app/queues/) of the heavy tasks (app/task_registry.py). Unset: they run in the web worker.
    broker_url: AnyUrl | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_URL", "CELERY_BROKER_URL"),
        description="`redis://…` or `amqp://…`: heavy tasks go to the `TASK_QUEUE` library on that broker. "
        "Unset: they run in-process.",
    )
    task_queue: str = Field(
        default=next(iter(QUEUE_LIBRARIES)),  # the first registered (app/queues/registry.py)
        description="`celery`, `dramatiq` or `rq` (Redis only): the library of `make worker`.",
    )
    broker_management_url: AnyHttpUrl | None = Field(
        default=None,
        description="RabbitMQ's management API, e.g. `http://user:pass@rabbitmq:15672`: the worker reads the "
        "queue depth there, unacknowledged count included. Unset: the ready count over AMQP, the unacknowledged "
        "count unknown.",
    )
    enqueue_timeout_seconds: float = Field(
        default=1.0,
        ge=0.05,
        le=30,
        description="Longest a request waits for the broker and the task state store before its 503.",
    )
    task_time_limit_seconds: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="A queued task running longer fails with `TimeLimitExceeded`, on every library.",
    )
    task_state_url: RedisDsn | None = Field(
        default=None,
        description="Redis for `GET`/`DELETE /tasks/{id}`; needed beside RabbitMQ, else tracking is off (501).",
        json_schema_extra={"shown_default": "a Redis `BROKER_URL`"},
    )
    task_state_ttl_seconds: int = Field(
        default=86_400,
        ge=60,
        le=90 * 86_400,
        description="How long a queued task's state is kept after its last change.",
    )
    worker_concurrency: int = Field(
        default=2,
        ge=1,
        le=256,
        description="Processes of `make worker`: Celery's prefork children, Dramatiq's processes, RQ's pool workers.",
    )
    worker_threads: int = Field(default=8, ge=1, le=256, description="Threads per Dramatiq process, and its prefetch.")
    worker_max_tasks_per_child: int = Field(
        default=1000, ge=1, description="A Celery child is replaced after this many tasks."
    )
    worker_metrics_port: int = Field(default=9808, ge=1, le=65535, description="The worker's `/metrics`, on `HOST`.")
    worker_alive_file: Path = Field(
        default=Path(tempfile.gettempdir()) / "background-tasks-consumer-alive",
        description="Touched every few seconds while the worker's consumer is connected: the liveness probe.",
        json_schema_extra={"shown_default": "`$TMPDIR/background-tasks-consumer-alive`"},
    )
    worker_shutdown_seconds: float = Field(
        default=30.0,
        ge=0,
        le=3600,
        description="On SIGTERM, how long running queued tasks may finish before they go back to the broker.",
    )
    queue_visibility_timeout_seconds: int = Field(
        default=3600,
        ge=1,
        description="On Redis, a task unacknowledged this long is given back (Celery's visibility timeout, "
        "Dramatiq's heartbeat timeout): above `TASK_TIME_LIMIT_SECONDS` and `WORKER_SHUTDOWN_SECONDS`.",
    )

    sentry_dsn: AnyHttpUrl | None = Field(default=None, description="Sentry on when set.")
    sentry_environment: str = Field(default="production", description="Sentry's environment of every event.")
    sentry_release: str | None = Field(default=None, description="Sentry's release of every event.")

    otel_sdk_disabled: bool = Field(
        default=False, description="`true`: no spans at all (no trace ids in logs, headers or Sentry events)."
    )
    otel_service_name: str = Field(default="fastapi-background-tasks", description="The spans' `service.name`.")
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = Field(
        default=None, description="OTLP/HTTP base URL; spans go to `<endpoint>/v1/traces`. Unset: no export."
    )
    otel_traces_sampler: TracesSampler = Field(
        default="parentbased_always_on", description="`always_on`, `always_off`, `traceidratio`, `parentbased_*`."
    )
    otel_traces_sampler_arg: float = Field(
        default=1.0, ge=0, le=1, description="The ratio of the `traceidratio` samplers."
    )

    @field_validator("api_token", "metrics_token")
    @classmethod
    def _refuse_weak_token(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None:
            return None
        if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"must be a real secret of at least {MIN_TOKEN_LENGTH} characters, e.g. secrets.token_urlsafe(32)"
            )
        return token

    @model_validator(mode="after")
    def _queue_fits_broker(self) -> "Settings":
        if self.task_queue not in QUEUE_LIBRARIES:
            raise ValueError(
                f"TASK_QUEUE={self.task_queue!r} is no queue library for BROKER_URL: use {', '.join(QUEUE_LIBRARIES)}"
            )
        if self.broker_url is None:
            return self
        scheme = self.broker_url.scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError("BROKER_URL must be redis://…, rediss://…, amqp://… or amqps://…")
        brokers = QUEUE_LIBRARIES[self.task_queue].brokers
        if {"rediss": "redis", "amqps": "amqp"}.get(scheme, scheme) not in brokers:
            raise ValueError(f"TASK_QUEUE={self.task_queue} runs on {' or '.join(brokers)} only: set BROKER_URL to one")
        longest = max(self.task_time_limit_seconds, self.worker_shutdown_seconds)
        if self.queue_visibility_timeout_seconds <= longest:
            raise ValueError(
                f"QUEUE_VISIBILITY_TIMEOUT_SECONDS must be above TASK_TIME_LIMIT_SECONDS and WORKER_SHUTDOWN_SECONDS "
                f"({longest:g}), or Redis redelivers tasks that are still running"
            )
        return self

    @property
    def enqueue_attempt_seconds(self) -> float:
        """One attempt to reach the broker from the web side: a third of the request's budget, so a
        refused or hung connection fails in time for one retry, and the request still answers."""
        return self.enqueue_timeout_seconds / 3

    @property
    def broker_on_redis(self) -> bool:
        return self.broker_url is not None and self.broker_url.scheme in ("redis", "rediss")

    @property
    def task_state_redis(self) -> str | None:
        """Where queued tasks' states live: TASK_STATE_URL, else a Redis broker; None: tracking is off."""
        if self.broker_url is None:
            return None
        if self.task_state_url is not None:
            return str(self.task_state_url)
        return str(self.broker_url) if self.broker_on_redis else None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("otel_traces_sampler", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


def describe_error(error: ValidationError) -> str:
    """One line per bad setting, named as its environment variable, with no secret echoed."""
    lines = ["Invalid settings:"]
    for problem in error.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in problem["loc"]).upper()
        # A rule across settings (a model validator) has no location: its message names them.
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {name}: {message}" if name else f"  {message}")
    return "\n".join(lines)
