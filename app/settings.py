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

# Long enough to refuse the tutorial's "test123" and the usual placeholders ("changeme", "secret").
MIN_TOKEN_LENGTH = 16
# After the drain: time to flush spans and Sentry events before gunicorn's SIGKILL.
SHUTDOWN_FLUSH_SECONDS = 10

TASK_QUEUES = ("celery", "dramatiq", "rq")
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
        default=None, description="Bearer token for /notify/. Unset: /notify/ answers 401."
    )
    api_username: str = Field(default="api-user", min_length=1, max_length=64)
    metrics_token: SecretStr | None = Field(
        default=None, description="Bearer token that GET /metrics requires. Unset: /metrics is open."
    )
    telemetry_include_pii: bool = Field(
        default=False, description="Task arguments in spans, local variables and request data in Sentry events."
    )
    log_file: Path = Path("background-tasks.log")
    email_send_seconds: float = Field(default=5.0, ge=0, le=3600)
    email_failure_rate: float = Field(default=0.0, ge=0, le=1, description="Share of simulated sends that fail.")
    email_max_attempts: int = Field(
        default=3, ge=1, le=100, description="send_email's attempts, the first included, on EmailDeliveryError."
    )
    email_retry_backoff_seconds: float = Field(
        default=1.0, gt=0, le=3600, description="The wait before send_email's first retry; doubled each time."
    )
    max_message_length: int = Field(default=1000, ge=1, le=100_000)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    web_concurrency: int = Field(default=2, ge=1, le=64)
    task_threads: int = Field(default=40, ge=1, le=1000, description="Threads for sync tasks, apart from endpoints'.")
    max_pending_tasks: int = Field(
        default=1000, ge=1, le=1_000_000, description="Per worker; beyond it, task routes answer 503."
    )
    retry_after_seconds: int = Field(default=2, ge=1, le=3600, description="Retry-After sent with that 503.")
    drain_seconds: float = Field(
        default=20.0, ge=0, le=3600, description="After a stop signal, how long pending tasks may run."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = Field(default="json", description="text: one readable line, for a terminal.")
    access_log: bool = Field(default=False, description="A line per request: route template, status, duration.")

    # The queue (app/queues/) of the heavy tasks (app/task_registry.py). Unset: they run in the web worker.
    broker_url: AnyUrl | None = Field(
        default=None,
        validation_alias=AliasChoices("BROKER_URL", "CELERY_BROKER_URL"),
        description="redis://… or amqp://…; set: heavy tasks go to the TASK_QUEUE library on that broker.",
    )
    task_queue: str = Field(default="celery", description="celery, dramatiq or rq: the library of `make worker`.")
    broker_management_url: AnyHttpUrl | None = Field(
        default=None,
        description="RabbitMQ's management API, for the queue depth: by default BROKER_URL's host, port 15672.",
    )
    enqueue_timeout_seconds: float = Field(
        default=1.0, ge=0.05, le=30, description="Longest a request waits for the broker before its 503."
    )
    task_time_limit_seconds: float = Field(
        default=600.0, gt=0, le=86_400, description="A queued task running longer fails with TimeLimitExceeded."
    )
    task_state_url: RedisDsn | None = Field(
        default=None,
        description="Redis for GET/DELETE /tasks/{id}: by default a Redis BROKER_URL; with RabbitMQ, none (off).",
    )
    task_state_ttl_seconds: int = Field(
        default=86_400, ge=60, le=90 * 86_400, description="How long a queued task's state is kept."
    )
    worker_concurrency: int = Field(default=2, ge=1, le=256, description="Processes of `make worker`.")
    worker_threads: int = Field(default=8, ge=1, le=256, description="Threads per process (Dramatiq only).")
    worker_max_tasks_per_child: int = Field(default=1000, ge=1, description="A process is recycled after this many.")
    worker_metrics_port: int = Field(default=9808, ge=1, le=65535)
    worker_alive_file: Path = Field(
        default=Path(tempfile.gettempdir()) / "background-tasks-consumer-alive",
        description="Touched every few seconds while the worker's consumer is connected: the liveness probe.",
    )
    worker_shutdown_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="On SIGTERM, how long running queued tasks may finish before requeue."
    )
    queue_visibility_timeout_seconds: int = Field(
        default=3600, ge=1, description="Unacknowledged tasks are redelivered after this: above the longest task."
    )

    sentry_dsn: AnyHttpUrl | None = None
    sentry_environment: str = "production"
    sentry_release: str | None = None

    otel_sdk_disabled: bool = Field(default=False, description="No spans at all: no trace ids, no export.")
    otel_service_name: str = "fastapi-background-tasks"
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None
    otel_traces_sampler: TracesSampler = "parentbased_always_on"
    otel_traces_sampler_arg: float = Field(default=1.0, ge=0, le=1)

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
        if self.task_queue not in TASK_QUEUES:
            raise ValueError(
                f"TASK_QUEUE={self.task_queue!r} is no queue library for BROKER_URL: use {', '.join(TASK_QUEUES)}"
            )
        if self.broker_url is None:
            return self
        scheme = self.broker_url.scheme
        if scheme not in BROKER_SCHEMES:
            raise ValueError("BROKER_URL must be redis://…, rediss://…, amqp://… or amqps://…")
        if self.task_queue == "rq" and not self.broker_on_redis:
            raise ValueError("TASK_QUEUE=rq needs a Redis BROKER_URL (redis://…): RQ has no RabbitMQ broker")
        longest = max(self.task_time_limit_seconds, self.worker_shutdown_seconds)
        if self.queue_visibility_timeout_seconds <= longest:
            raise ValueError(
                f"QUEUE_VISIBILITY_TIMEOUT_SECONDS must be above TASK_TIME_LIMIT_SECONDS and WORKER_SHUTDOWN_SECONDS "
                f"({longest:g}), or Redis redelivers tasks that are still running"
            )
        return self

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
