"""The server spans: opentelemetry-instrumentation-fastapi, configured for what this template needs.

- Its metrics are never made (a no-op meter provider): its ``http.server.duration`` includes the
  background tasks (upstream issue #3591). The template's own request metrics stop at the last byte.
- No ``receive``/``send`` child spans: two spans per request that say nothing a dashboard reads.
- The probes and the scrape are not traced unless OTEL_PYTHON_FASTAPI_EXCLUDED_URLS (or
  OTEL_PYTHON_EXCLUDED_URLS) says otherwise.
- The stable HTTP semantic conventions (OTEL_SEMCONV_STABILITY_OPT_IN=http unless set). What
  reaches the exporter is filtered by tracing.py: no query string, client address or user agent.
- Under ``opentelemetry-instrument``, an app it already instrumented with its defaults is
  instrumented again with these settings and this provider, so nothing is instrumented twice.
"""

import os

from fastapi import FastAPI
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider

UNTRACED_URLS = "/metrics$,/healthz$,/readyz$"


def instrument_app(app: FastAPI, tracer_provider: TracerProvider) -> None:
    # Read once per process, when the first instrumentation is installed: under opentelemetry-instrument
    # that is before the app exists, so only the environment can set it (the image does).
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http")
    if getattr(app, "_is_instrumented_by_opentelemetry", False):
        FastAPIInstrumentor.uninstrument_app(app)
        app.middleware_stack = None  # uninstrument_app builds it; built on the first request instead
    excluded = os.environ.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS") or os.environ.get("OTEL_PYTHON_EXCLUDED_URLS")
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        meter_provider=NoOpMeterProvider(),
        exclude_spans=["receive", "send"],
        excluded_urls=excluded or UNTRACED_URLS,
    )
