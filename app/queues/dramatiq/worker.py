"""The Dramatiq worker's broker: `dramatiq app.queues.dramatiq.worker:broker`, which
`python -m app.worker_main` (`make worker`, the image, compose, k8s) starts and keeps running, with
PROMETHEUS_MULTIPROC_DIR set: every worker process writes its values there.

Dramatiq imports this module in each worker process it starts; nothing here connects until then.
"""

import dramatiq
from dramatiq.middleware import CurrentMessage

from app.observability.worker_process import WorkerProcesses
from app.queues.adapters import worker_settings
from app.queues.dramatiq.client import make_broker
from app.queues.dramatiq.consumer import WorkerHooks, observed_actor
from app.queues.dramatiq.names import QUEUE
from app.queues.task_states import task_states
from app.task_registry import task_registry

settings = worker_settings()
processes = WorkerProcesses(settings, instrument=lambda _provider: None)  # spans: app/queues/spans.py
broker = make_broker(settings, [CurrentMessage(), WorkerHooks(processes, settings)], producer=False)
states = task_states(settings)
for task in task_registry(settings).values():
    policy = task.retry
    declare = dramatiq.actor(
        broker=broker,
        actor_name=task.name,
        queue_name=QUEUE,
        time_limit=int(settings.task_time_limit_seconds * 1000),
        # Dramatiq's Retries middleware applies the policy, with its own exponential backoff; the
        # predicate is the policy's, so that observed_task counts a retry exactly when one comes.
        **(
            {
                "retry_when": lambda retries, exc, policy=policy: policy.retries(retries + 1, exc),
                "min_backoff": int(policy.first_backoff_seconds * 1000),
                "max_backoff": int(policy.max_backoff_seconds * 1000),
            }
            if policy is not None
            else {"max_retries": 0}
        ),
    )
    declare(observed_actor(processes, states, task))
