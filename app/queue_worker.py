"""The Celery worker's app: `celery -A app.queue_worker worker` (what `make worker` runs).

Set before anything imports prometheus_client, which picks its storage at import: the main
process and every prefork child write their values to files in this directory.
"""

import os
import tempfile

from pydantic import ValidationError

os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="prometheus-multiproc-worker-"))
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

from app.celery_app import create_celery  # noqa: E402
from app.observability.celery_tasks import install  # noqa: E402
from app.observability.logging import exit_with  # noqa: E402
from app.queued import queued_tasks  # noqa: E402
from app.settings import Settings, describe_error  # noqa: E402

try:
    settings = Settings()
except ValidationError as error:  # fail before any child forks, naming the setting
    exit_with(describe_error(error))
if settings.celery_broker_url is None:
    exit_with("Invalid settings:\n  CELERY_BROKER_URL: required by the worker, e.g. redis://127.0.0.1:6379/0")

app = create_celery(settings, queued_tasks(settings), producer=False)
install(app, settings)
