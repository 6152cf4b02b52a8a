"""Celery, bare or stock. Stock: opentelemetry-instrumentation-celery, sentry-sdk's
CeleryIntegration, and the task events celery-exporter reads (`-E`, plus the sent event)."""

import os
from typing import Any

from celery import Celery, signals

from bench.queue_peers import STOCK, run_send_email

app = Celery("bench", broker=os.environ["BROKER_URL"], set_as_current=False)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    task_ignore_result=True,
    # The template's, which are not telemetry: a child recycled every 1,000 tasks, the time limits.
    worker_max_tasks_per_child=1000,
    task_soft_time_limit=600,
    task_time_limit=610,
    task_serializer="json",
    accept_content=["json"],
    worker_send_task_events=STOCK,
    task_send_sent_event=STOCK,
)
app.task(name="send_email")(run_send_email)


@signals.worker_process_init.connect(weak=False)
def start_stock(**_: Any) -> None:
    if not STOCK:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor  # noqa: PLC0415
    from sentry_sdk.integrations.celery import CeleryIntegration  # noqa: PLC0415

    from bench.queue_peers.stock import start_sentry, start_tracing  # noqa: PLC0415

    start_sentry(CeleryIntegration())
    start_tracing(CeleryInstrumentor())
