"""What both sides of Dramatiq share, without importing Dramatiq: the web side's producer and the
adapter read it, as the worker does."""

from app.queues.spans import Destination

QUEUE = "default"  # Dramatiq's default queue
DELAY_QUEUE = f"{QUEUE}.DQ"  # where Dramatiq keeps a delayed message (a retry) until it is due
DESTINATION = Destination("dramatiq", QUEUE)
ENVELOPE = "envelope"  # the message option that carries it
