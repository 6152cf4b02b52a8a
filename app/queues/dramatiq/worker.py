"""The Dramatiq worker's broker: `dramatiq app.queues.dramatiq.worker:broker`, which
`python -m app.worker_main` (`make worker`, the image, compose, k8s) starts and keeps running, with
PROMETHEUS_MULTIPROC_DIR set: every worker process writes its values there.

Dramatiq imports this module in each worker process it starts; nothing here connects until then.
"""

import dramatiq
from dramatiq.middleware import CurrentMessage

from app.observability.worker_process import WorkerProcesses
from app.queues import worker_settings
from app.queues.dramatiq.broker import QUEUE, make_broker
from app.queues.dramatiq.consumer import WorkerHooks, observed_actor
from app.task_registry import task_registry

settings = worker_settings()
processes = WorkerProcesses(settings, instrument=lambda _provider: None)  # spans: app/queues/spans.py
broker = make_broker(settings, [CurrentMessage(), WorkerHooks(processes, settings)], producer=False)
for name, func in task_registry(settings).items():
    declare = dramatiq.actor(
        broker=broker,
        actor_name=name,
        queue_name=QUEUE,
        max_retries=0,
        time_limit=int(settings.task_time_limit_seconds * 1000),
    )
    declare(observed_actor(broker, processes, name, func))
