"""The queue libraries this template runs, one line each: the class of its adapter (its package
under app/queues/) and the brokers it runs on. Remove a library with its package and its line;
add one with both (docs/architecture.md). Nothing is imported here: settings check TASK_QUEUE
against it before any library loads."""

from typing import NamedTuple


class Registered(NamedTuple):
    adapter: str  # "<module>:<class>"
    brokers: tuple[str, ...]  # BROKER_URL schemes, without their TLS variant


QUEUE_LIBRARIES = {
    "celery": Registered("app.queues.celery.adapter:CeleryAdapter", ("redis", "amqp")),
    "dramatiq": Registered("app.queues.dramatiq.adapter:DramatiqAdapter", ("redis", "amqp")),
    "rq": Registered("app.queues.rq.adapter:RQAdapter", ("redis",)),
}
