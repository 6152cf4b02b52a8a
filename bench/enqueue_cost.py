"""Where one enqueue's time goes, per library on Redis, each part timed alone in one process (the
mean wall time of many in a row, in µs): the hop to a thread and back (anyio's, as the web side
makes it), the broker's round trip (a PING), the task state's write, the library's publish without
a span, and what the PRODUCER span adds to it (exported, as in production, to a local receiver)."""

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from anyio import to_thread
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from app.queues.adapters import adapter
from app.queues.envelope import Envelope
from app.queues.task_states import task_states
from app.settings import Settings
from app.task_registry import task_registry
from bench.queue_throughput import ARGS, ROUTE, database_url
from harness import OtlpReceiver, RedisServer


def _mean_us(call: Callable[[], Any], times: int = 1000) -> float:
    for _ in range(times // 10):  # warm
        call()
    started = time.perf_counter()
    for _ in range(times):
        call()
    return (time.perf_counter() - started) / times * 1e6


def _thread_hop_us(times: int = 2000) -> float:
    async def hops() -> float:
        def nothing() -> None:
            return None

        for _ in range(times // 10):
            await to_thread.run_sync(nothing)
        started = time.perf_counter()
        for _ in range(times):
            await to_thread.run_sync(nothing)
        return (time.perf_counter() - started) / times * 1e6

    return asyncio.run(hops())


def enqueue_breakdown(work: Path, backends: tuple[str, ...], otlp: OtlpReceiver) -> dict[str, dict[str, float]]:
    redis_server = RedisServer(work / "enqueue-redis").start()
    try:
        hop = _thread_hop_us()
        round_trip = _mean_us(redis.Redis.from_url(redis_server.url).ping)
        results = {}
        for db, backend in enumerate(backends, start=1):
            url = database_url(redis_server, db)
            settings = Settings(task_queue=backend, broker_url=url, log_file=work / "enqueue.log")  # type: ignore[arg-type]
            producer = adapter(settings).producer(task_registry(settings))
            states = task_states(settings)
            assert states is not None

            def publish() -> None:
                producer.publish("send_email", ARGS, Envelope.new(ROUTE))  # noqa: B023 - called in this iteration

            def state() -> None:
                envelope = Envelope.new(ROUTE)
                states.queued(envelope.task_id, "send_email", ROUTE, envelope.enqueued_at)  # noqa: B023

            bare_publish = _mean_us(publish)
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp.endpoint + "/v1/traces")))
            producer.instrument(provider)
            spanned_publish = _mean_us(publish)
            provider.shutdown()
            results[backend] = {
                "thread_hop_us": hop,
                "broker_round_trip_us": round_trip,
                "state_write_us": _mean_us(state),
                "publish_us": bare_publish,
                "producer_span_us": spanned_publish - bare_publish,
            }
        return results
    finally:
        redis_server.stop()
