"""The peers `make bench` measures the template against, each used the way its README shows.

- ``pfi``: bare FastAPI with prometheus-fastapi-instrumentator (multiprocess mode: gunicorn's
  config sets PROMETHEUS_MULTIPROC_DIR, which it reads), measuring requests and no tasks.
- ``stock``: the naive observability stack: that instrumentator, FastAPIInstrumentor with its
  defaults exporting every span over OTLP (BENCH_OTLP_ENDPOINT), and sentry-sdk with its default
  integrations and ``traces_sample_rate=1.0`` (BENCH_SENTRY_DSN).

gunicorn calls these factories in each worker, after the fork, so the exporter's thread is the
worker's own.
"""

import os

import sentry_sdk
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from prometheus_fastapi_instrumentator import Instrumentator

from bench import bare_app


def pfi() -> FastAPI:
    app = bare_app.create()
    Instrumentator().instrument(app).expose(app)
    return app


def stock() -> FastAPI:
    sentry_sdk.init(dsn=os.environ["BENCH_SENTRY_DSN"], traces_sample_rate=1.0)
    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["BENCH_OTLP_ENDPOINT"] + "/v1/traces"))
    )
    app = pfi()
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)
    return app
