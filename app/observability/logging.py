"""One log format for every process: a JSON object per line on stderr, with the trace and span ids.

``logging_config`` is the one configuration, applied through each server's own hook: gunicorn's
``logconfig_dict`` (deploy/gunicorn.conf.py; uvicorn-worker hands gunicorn's handlers on to
uvicorn's loggers), and each queue library's (app/queues/<library>/: Celery's ``celeryd_init``
and ``setup_logging`` signals, Dramatiq's ``after_process_boot``, RQ's settings module). Third-party
loggers propagate to the root handler, so their lines and tracebacks come out in the same format;
what a library prints past logging, the queue worker's entry point relays as JSON
(output_relay.py).
"""

import json
import logging
import logging.config
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, NoReturn

from app.observability.tracing import current_ids

LOGGER_NAME = "app"
ACCESS_LOGGER_NAME = "app.access"
LogFormat = Literal["json", "text"]
# uvicorn adds color_message, the message with terminal colour codes: not for a log pipeline.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}
# gunicorn, uvicorn and Celery say at INFO when they boot, recycle and stop; LOG_LEVEL=DEBUG
# is for the app's own lines (gunicorn's DEBUG dumps its whole configuration).
_SERVER_LEVEL_FLOOR = logging.INFO


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update(_extras(record))
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:  # a traceback that came as text (app/observability/output_relay.py)
            line["exc_info"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """LOG_FORMAT=text, for a terminal: one line per record, extras as key=value, then any traceback."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(process)d] %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        return f"{super().formatMessage(record)} {extras}" if extras else super().formatMessage(record)


class TraceIdsFilter(logging.Filter):
    """Stamps the current span's ids on every record, unless the caller already did."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "trace_id"):
            ids = current_ids()
            if ids is not None:
                record.trace_id, record.span_id = ids
        return True


class TaskArgumentsFilter(logging.Filter):
    """Celery puts a task's arguments (emails, messages) in its records' ``data``: not in a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("celery."):
            record.__dict__.pop("data", None)
        return True


# The queue libraries' line per task run ("received", "succeeded", "Job OK", its result's
# lifetime): each run is a metric sample and a span already, and the template logs a success at
# DEBUG; so do these, shown with LOG_LEVEL=DEBUG. A million tasks a day were two million lines.
_PER_TASK_LOGGERS = ("celery.app.trace", "celery.worker.strategy")  # nothing else at INFO
_RQ_PER_JOB_LINES = frozenset(
    {
        "Worker %s: %s: %s",
        "Worker %s: %s: %s (%s)",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result is kept for %s seconds",
        "Worker %s: job %s result will never expire, clean up result key manually",
    }
)


class RQPerJobLines(logging.Filter):
    """RQ's worker logs its start and stop on the same logger as its line per job: only those go."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in _RQ_PER_JOB_LINES)


def logging_config(level: str, log_format: LogFormat) -> dict[str, Any]:
    """The dictConfig of every process: the app's loggers at LOG_LEVEL, the servers' at INFO or
    above, the queue libraries' line per task at DEBUG."""
    server_level = logging.getLevelName(max(logging.getLevelName(level), _SERVER_LEVEL_FLOOR))
    per_task = level == "DEBUG"
    formatter = JsonFormatter if log_format == "json" else TextFormatter
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": formatter}},
        "filters": {
            "trace_ids": {"()": TraceIdsFilter},
            "task_arguments": {"()": TaskArgumentsFilter},
            "rq_per_job": {"()": RQPerJobLines},
        },
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "line",
                "filters": ["trace_ids", "task_arguments"],
            }
        },
        "root": {"level": server_level, "handlers": ["stderr"]},
        "loggers": {
            LOGGER_NAME: {"level": level},
            "gunicorn.error": {"level": server_level, "handlers": ["stderr"], "propagate": False},
            # No handler, so uvicorn's access log (full path, query string included) stays off even
            # though uvicorn-worker copies these handlers; ACCESS_LOG=true logs through app.access.
            "gunicorn.access": {"handlers": [], "propagate": False},
            **{name: {"level": "DEBUG" if per_task else "WARNING"} for name in _PER_TASK_LOGGERS},
            "rq.worker": {"filters": [] if per_task else ["rq_per_job"]},
        },
    }


def configure_logging(level: str, log_format: LogFormat) -> None:
    logging.config.dictConfig(logging_config(level, log_format))
    log_what_bypasses_logging()


def log_what_bypasses_logging() -> None:
    """A Python warning, and an exception that nothing caught in any thread, are log lines too,
    not raw text on stderr."""
    logging.captureWarnings(True)
    logger = logging.getLogger(LOGGER_NAME)

    def uncaught(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
        logger.critical("uncaught exception", exc_info=(kind, value, traceback))

    def uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
        # Called in the failing thread: the record's thread is that one.
        if args.exc_type is not SystemExit:
            error = args.exc_value if args.exc_value is not None else args.exc_type()
            logger.error("uncaught exception in a thread", exc_info=(args.exc_type, error, args.exc_traceback))

    sys.excepthook = uncaught
    threading.excepthook = uncaught_in_thread


def exit_with(message: str) -> NoReturn:
    """Stops a process that cannot start, saying why as a JSON line like every other one."""
    record = logging.LogRecord(LOGGER_NAME, logging.CRITICAL, __file__, 0, message, None, None)
    sys.stderr.write(JsonFormatter().format(record) + "\n")
    sys.stderr.flush()
    sys.exit(1)
