"""The queue libraries without the template, for `make bench` to measure it against.

Each runs the template's own task function (app.tasks.send_email, EMAIL_SEND_SECONDS long) under
the library's own worker, with the template's reliability settings (late acknowledgements,
prefetch of one, JSON) and either

- ``bare`` (BENCH_VARIANT unset): no telemetry at all; or
- ``stock`` (BENCH_VARIANT=stock): what a team assembles from the library's ecosystem. sentry-sdk
  with the library's integration and ``traces_sample_rate=1.0`` (as the web side's stock peer), the
  OpenTelemetry instrumentation where one exists, exporting every span over OTLP, and the
  library's own metrics. Which parts each library has is in bench/RESULTS.md.
"""

import os
from pathlib import Path

from app.tasks import LogFile, send_email

STOCK = os.environ.get("BENCH_VARIANT") == "stock"


def run_send_email(email: str, subject: str, body: str) -> None:
    send_email(
        LogFile(Path(os.environ["LOG_FILE"])),
        email,
        subject,
        body,
        delay_seconds=float(os.environ["EMAIL_SEND_SECONDS"]),
    )
