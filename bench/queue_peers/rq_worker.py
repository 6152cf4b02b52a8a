"""RQ, bare or stock, as `rq worker-pool --worker-class`. Stock: sentry-sdk's RqIntegration.
OpenTelemetry's contrib has no RQ instrumentation, and the one on PyPI (opentelemetry-
instrumentation-rq 0.1.4) fails on RQ 3 (it wraps Job.execute_success_callback, which is gone).
RQ's metrics come from rq-exporter, a process of its own that reads Redis: nothing in the worker."""

from typing import Any

from rq.worker import Worker

from bench.queue_peers import STOCK, run_send_email

send_email = run_send_email  # the job's function, as bench.queue_peers.rq_worker.send_email


class BenchWorker(Worker):
    def work(self, *args: Any, **kwargs: Any) -> bool:
        if STOCK:
            from sentry_sdk.integrations.rq import RqIntegration  # noqa: PLC0415

            from bench.queue_peers.stock import start_sentry  # noqa: PLC0415

            start_sentry(RqIntegration())
        return super().work(*args, **kwargs)
