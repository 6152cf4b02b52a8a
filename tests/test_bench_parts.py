"""make bench splits a queue worker's CPU by part from py-spy's samples: each stack counts once, for
the first part it touches, so the shares add up to the whole."""

import pytest

from bench.queue_throughput import split_samples

SITE = "/venv/lib/python3.11/site-packages"
RAW = "\n".join(
    [
        f'process 1:"celery";worker (/x/app/queues/spans.py:40);end (/x{SITE}/opentelemetry/sdk/trace/__init__.py:9) 6',
        f"thread;_export (/x{SITE}/opentelemetry/sdk/_shared_internal/__init__.py:3);"
        f"encode (/x{SITE}/opentelemetry/exporter/otlp/proto/common/_internal/__init__.py:77) 3",
        f"observe (/x/app/observability/metrics.py:5);inc (/x{SITE}/prometheus_client/values.py:8) 2",
        "claim (/x/app/queues/task_states.py:10);execute (/x/redis/client.py:1) 4",
        "send_email (/x/app/tasks.py:65) 5",
        "not a sample line",
    ]
)


def test_each_sample_counts_once_for_the_first_part_it_touches() -> None:
    shares = split_samples(RAW)
    assert shares == pytest.approx(
        {"export": 3 / 20, "metrics": 2 / 20, "state store": 4 / 20, "span": 6 / 20, "rest": 5 / 20}
    )
    assert sum(shares.values()) == pytest.approx(1.0)
