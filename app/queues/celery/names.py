"""What both sides of Celery share, without importing Celery: the web side's producer and the
adapter read it, as the worker does."""

from app.queues.spans import Destination

QUEUE = "celery"  # Celery's default queue
DESTINATION = Destination("celery", QUEUE)
