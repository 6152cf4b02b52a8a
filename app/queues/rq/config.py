"""RQ's own settings module (`rq worker-pool --config app.queues.rq.config`): the Redis URL (not on
the command line, where `ps` shows it) and the logging of every process, pool and workers, as
JSON lines like every other (app/observability/logging.py)."""

from app.observability.logging import logging_config
from app.queues import worker_settings

_settings = worker_settings()
REDIS_URL = str(_settings.broker_url)
DICT_CONFIG = logging_config(_settings.log_level, _settings.log_format)
