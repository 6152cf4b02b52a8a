"""What a process forked for one task (RQ's work horse) hands to the process that forked it: the
spans it ended and its metrics' updates, which the parent exports and writes.

A horse that did both itself would, for each job, restart the batch processor's thread, open a
connection to the collector and wait for one export before it exits, and create its own metric
files, which its parent then folds into the others: over 15 ms of a job that runs for 1 ms
(`make bench`). Instead the horse holds its spans and records its metric calls, and writes both,
as it exits, to a pipe its parent opened before the fork; the parent reads them once it has
reaped the horse. The spans are the same (ids, parent, times, attributes, events, status; the
resource is the parent's, which is the horse's), the metric calls the same calls.

A horse killed before it exits hands nothing over; its parent observes the run's end itself, as
it did when the horse wrote its own files (it could not flush its spans either). What is too big
for the pipe, or what a horse whose parent was killed holds, the horse exports and writes itself.
"""

import copy
import fcntl
import os
import pickle
from typing import Any, cast

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from prometheus_client.metrics import MetricWrapperBase

from app.observability.metrics import Metrics

_PIPE_BYTES = 1 << 20  # what a horse may hand over: a no-op task's span and metrics take about 2 KB
# A metric call: the Metrics attribute, the label values, the method ("" for labels() alone) and its
# argument.
Call = tuple[str, tuple[str, ...], str, float]


def _context(context: SpanContext | None) -> tuple[Any, ...] | None:
    if context is None:
        return None
    items = tuple(context.trace_state.items())
    return context.trace_id, context.span_id, context.is_remote, int(context.trace_flags), items


def _span_context(fields: tuple[Any, ...] | None) -> SpanContext | None:
    if fields is None:
        return None
    trace_id, span_id, is_remote, flags, state = fields
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(list(state)))


def _fields(span: ReadableSpan) -> tuple[Any, ...]:
    scope = span.instrumentation_scope
    return (
        span.name,
        _context(span.context),
        _context(span.parent),
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes or {}),
        [(event.name, dict(event.attributes or {}), event.timestamp) for event in span.events],
        [(_context(link.context), dict(link.attributes or {})) for link in span.links],
        span.status.status_code.value,
        span.status.description,
        None if scope is None else (scope.name, scope.version, scope.schema_url),
    )


def _span(fields: tuple[Any, ...], resource: Resource) -> ReadableSpan:
    name, context, parent, kind, start, end, attributes, events, links, code, description, scope = fields
    return ReadableSpan(
        name=name,
        context=_span_context(context),
        parent=_span_context(parent),
        resource=resource,
        attributes=attributes,
        events=[Event(n, a, t) for n, a, t in events],
        links=[Link(_span_context(c), a) for c, a in links],  # type: ignore[arg-type]
        kind=SpanKind(kind),
        status=Status(StatusCode(code), description),
        start_time=start,
        end_time=end,
        instrumentation_scope=None if scope is None else InstrumentationScope(*scope),
    )


class RecordedMetric:
    """A metric of a horse: its calls recorded, to be made by the parent."""

    def __init__(self, calls: list[Call], name: str, labels: tuple[str, ...] = ()) -> None:
        self._calls, self._name, self._labels = calls, name, labels

    def labels(self, *values: str) -> "RecordedMetric":
        self._calls.append((self._name, values, "", 0.0))  # a series exported at zero from now on
        return RecordedMetric(self._calls, self._name, values)

    def inc(self, amount: float = 1.0) -> None:
        self._calls.append((self._name, self._labels, "inc", amount))

    def dec(self, amount: float = 1.0) -> None:
        self._calls.append((self._name, self._labels, "dec", amount))

    def set(self, value: float) -> None:
        self._calls.append((self._name, self._labels, "set", value))

    def observe(self, amount: float) -> None:
        self._calls.append((self._name, self._labels, "observe", amount))


def recorded(metrics: Metrics, calls: list[Call]) -> Metrics:
    """``metrics`` with each metric recording its calls in ``calls`` instead of writing them."""
    copied = copy.copy(metrics)
    for name, value in vars(metrics).items():
        if isinstance(value, MetricWrapperBase):
            setattr(copied, name, RecordedMetric(calls, name))
    return copied


def replay(metrics: Metrics, calls: list[Call], *, skip: frozenset[str] = frozenset()) -> None:
    for name, labels, method, argument in calls:
        if name in skip:
            continue
        metric = getattr(metrics, name)
        child = metric.labels(*labels) if labels else metric
        if method:
            getattr(child, method)(argument)


class JobRelay:
    """The pipe from a horse to its parent, and what the horse holds until it exits."""

    def __init__(self) -> None:
        self._pipe: tuple[int, int] | None = None  # the parent's, from open() to collect()
        self._write = -1  # in a horse: its end of the pipe
        self._parent = 0  # the process that opened the pipe
        self.holding = False  # in a horse: spans and metric calls are held, not exported or written
        self.spans: list[ReadableSpan] = []
        self.calls: list[Call] = []

    def open(self) -> None:
        """In the parent, before it forks a horse (the job's end collects it, fork or not)."""
        read, write = os.pipe()
        fcntl.fcntl(write, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        self._pipe, self._parent = (read, write), os.getpid()

    def in_horse(self) -> bool:
        if self._pipe is None:
            return False
        read, self._write = self._pipe
        os.close(read)
        self._pipe, self.holding = None, True
        return True

    def hand_over(self) -> bool:
        """In the horse, as it exits: what it holds to the parent, in one write that the empty pipe
        takes whole (a partial write would corrupt it). False if it did not fit, or if the parent
        is gone (killed: the horse ran on without it): the caller exports and writes it."""
        self.holding = False
        data = pickle.dumps(([_fields(span) for span in self.spans], self.calls), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            if os.getppid() != self._parent or len(data) > fcntl.fcntl(self._write, fcntl.F_GETPIPE_SZ):
                return False
            os.write(self._write, data)
            return True
        finally:
            os.close(self._write)

    def collect(self) -> tuple[list[tuple[Any, ...]], list[Call]]:
        """In the parent, once the horse has exited: what it handed over."""
        if self._pipe is None:
            return [], []
        read, write = self._pipe
        self._pipe = None
        os.close(write)
        # Not blocking: a process the task forked may hold the pipe open, but what the horse
        # wrote is all there once it has exited.
        os.set_blocking(read, False)
        chunks = []
        try:
            while chunk := os.read(read, _PIPE_BYTES):
                chunks.append(chunk)
        except BlockingIOError:
            pass
        finally:
            os.close(read)
        if not chunks:
            return [], []
        spans, calls = pickle.loads(b"".join(chunks))  # noqa: S301 - written by our own horse
        return spans, cast("list[Call]", calls)


class RelayingSpanProcessor(SpanProcessor):
    """Its process's span processor (``inner``, the batch processor), but in a horse, where the
    relay holds the spans."""

    def __init__(self, inner: SpanProcessor, relay: JobRelay, resource: Resource) -> None:
        self.inner = inner
        self._relay = relay
        self._resource = resource

    def relayed(self, spans: list[tuple[Any, ...]]) -> None:
        """In the parent: the spans a horse handed over, to the batch processor."""
        for fields in spans:
            self.inner.on_end(_span(fields, self._resource))

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self._relay.holding:
            self._relay.spans.append(span)
        else:
            self.inner.on_end(span)

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)
