"""What travels with a queued task besides its arguments, written by the web side's producer and
read by the worker's consumer, whatever the library: neither side's framework is imported here."""

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry import propagate

NO_ROUTE = "none"  # scheduled outside a request
_ROUTE, _ENQUEUED_AT = "origin_route", "enqueued_at"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What travels with a queued task besides its arguments, defined once: its id, the route that
    scheduled it (its label on the worker), when it was enqueued (the queue wait is measured from
    it), and the trace context for a library whose instrumentation does not carry it itself (its
    consumer reads it with ``opentelemetry.propagate.extract``). Every adapter writes it with
    ``headers()`` and reads it back with ``Envelope.read()``."""

    task_id: str
    route: str
    enqueued_at: float

    @classmethod
    def new(cls, route: str) -> "Envelope":
        return cls(str(uuid.uuid4()), route, time.time())

    def headers(self, *, with_trace: bool) -> dict[str, Any]:
        headers: dict[str, Any] = {_ROUTE: self.route, _ENQUEUED_AT: self.enqueued_at}
        if with_trace:  # the current context: the publish runs in the request's
            propagate.inject(headers)
        return headers

    @classmethod
    def read(cls, headers: Mapping[str, Any] | None, task_id: str) -> "Envelope":
        headers = headers or {}
        enqueued_at = headers.get(_ENQUEUED_AT)
        return cls(
            task_id,
            str(headers.get(_ROUTE) or NO_ROUTE),
            float(enqueued_at) if enqueued_at is not None else time.time(),
        )

    def waited(self) -> float:
        # Wall clocks of two machines: a skewed clock shows as a wait of zero, never negative.
        return max(0.0, time.time() - self.enqueued_at)
