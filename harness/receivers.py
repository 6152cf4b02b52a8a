"""Local stand-ins that record what the service sends: Sentry's ingest and an OTLP receiver."""

import gzip
import json
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


class _Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, on_post: Callable[[str, dict[str, str], bytes], bytes]) -> None:
        self.on_post = on_post

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                reply = on_post(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                self.send_response(200)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class SentryIngest:
    """Stands in for Sentry's envelope endpoint and keeps every byte it received."""

    raw: list[bytes] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = _Recorder(self._record)

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.server.port}/1"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = body.split(b"\n")
        events = []
        # An envelope: a header line, then (item header, payload) pairs.
        for item_header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(item_header).get("type") == "event":
                events.append(json.loads(payload))
        with self.lock:
            self.raw.append(path.encode() + b"\n" + json.dumps(headers).encode() + b"\n" + body)
            self.events.extend(events)
        return b"{}"

    def events_tagged(self, key: str, value: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e.get("tags", {}).get(key) == value]

    def everything(self) -> bytes:
        with self.lock:
            return b"\n".join(self.raw)


@dataclass(frozen=True)
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any]
    event_names: list[str]
    start: int  # nanoseconds since the epoch


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf trace exports, as a collector would."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.paths: set[str] = set()
        self.lock = threading.Lock()
        self.server = _Recorder(self._record)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> bytes:
        with self.lock:
            self.paths.add(path)
        if path != "/v1/traces":
            return b""
        assert headers.get("content-type") == "application/x-protobuf"
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            Span(
                name=s.name,
                trace_id=s.trace_id.hex(),
                span_id=s.span_id.hex(),
                parent_span_id=s.parent_span_id.hex(),
                kind=s.kind,
                status_code=s.status.code,
                attributes={a.key: _any_value(a.value) for a in s.attributes},
                event_names=[e.name for e in s.events],
                start=s.start_time_unix_nano,
            )
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for s in ss.spans
        ]
        with self.lock:
            self.spans.extend(spans)
        return ExportTraceServiceResponse().SerializeToString()

    def trace(self, trace_id: str) -> list[Span]:
        with self.lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def _any_value(value: Any) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None
