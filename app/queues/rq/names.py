"""What both sides of RQ share, without importing RQ: the web side's producer and the adapter read
it, as the worker does."""

from app.queues.spans import Destination

QUEUE = "default"  # RQ's default queue
DESTINATION = Destination("rq", QUEUE)
ENVELOPE = "envelope"  # the job's meta key that carries it
SERIALIZER = "rq.serializers.JSONSerializer"  # JSON arguments, as on every backend (RQ's default is pickle)
JOBS = "app.queues.rq.worker"  # the module whose attribute <task name> is the function RQ runs


def function_path(name: str) -> str:
    """What a job names as its function: a path RQ imports in the worker (and shows in its tools)."""
    return f"{JOBS}.{name}"
