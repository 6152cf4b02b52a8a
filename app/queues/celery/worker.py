"""The Celery worker's app: `celery -A app.queues.celery.worker worker`, which
`python -m app.worker_main` (`make worker`, the image, compose, k8s) starts and keeps running.

Set before anything imports prometheus_client, which picks its storage at import: the main
process and every prefork child write their values to files in this directory.
"""

import os
import tempfile

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prometheus-multiproc-worker-"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from app.queues import worker_settings  # noqa: E402
from app.queues.celery.app import create_celery  # noqa: E402
from app.queues.celery.consumer import install  # noqa: E402
from app.task_registry import task_registry  # noqa: E402

settings = worker_settings()  # fail before any child forks, naming the setting
app = create_celery(settings, task_registry(settings), producer=False)
install(app, settings)
