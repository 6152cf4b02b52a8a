"""The Celery worker's app: `celery -A app.queues.celery.worker worker`, which
`python -m app.worker_main` (`make worker`, the image, compose, k8s) starts and keeps running, with
PROMETHEUS_MULTIPROC_DIR set: the main process and every prefork child write their values there.
"""

from app.queues.adapters import worker_settings
from app.queues.celery.client import create_celery
from app.queues.celery.consumer import ObservedTask, install
from app.queues.task_states import task_states
from app.task_registry import task_registry

settings = worker_settings()  # fail before any child forks, naming the setting
app = create_celery(settings, task_registry(settings), producer=False, task_class=ObservedTask)
app.task_states = task_states(settings)  # ObservedTask reads it
install(app, settings)
