#!/usr/bin/env python3
"""Send audit events to an OTLP logs endpoint with the real OpenTelemetry Python SDK.

Run it with the venv python made by scripts/python-venv:

    PY="$(scripts/python-venv | tail -n1)"
    "$PY" tests/python/send_audit.py --protocol grpc --endpoint http://127.0.0.1:4317 \
        --service demo-svc --actor alice --event model.download --body "downloaded sdxl" \
        --count 3 --uid-prefix run42

Records are emitted through the stdlib ``logging`` module via the SDK's
``opentelemetry.sdk._logs.LoggingHandler`` inside a span named "audit-demo",
so every record carries that span's trace id and span id.  Keys of the
``extra`` dict become log record attributes.

stdout gets exactly one JSON line: {"trace_id": ..., "span_id": ..., "exported": N}.
Diagnostics go to stderr.  Exit status is 0 only if every export call returned
SUCCESS and all N records were exported; otherwise 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import warnings

from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

AUDIT_LOGGER_NAME = "auditrail.send_audit"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--protocol", choices=("grpc", "http"), required=True)
    p.add_argument(
        "--endpoint",
        required=True,
        help="grpc: http://HOST:PORT; http: full URL incl. path, e.g. http://HOST:PORT/v1/logs",
    )
    p.add_argument("--service", required=True, help="resource attribute service.name")
    p.add_argument("--actor", required=True, help="attribute user.id")
    p.add_argument("--event", required=True, help="attribute event.name")
    p.add_argument("--body", required=True, help="log record body (string)")
    p.add_argument("--count", type=int, default=1, help="number of records (default 1)")
    p.add_argument(
        "--uid-prefix",
        default=None,
        help="if given, record i (0-based) gets attribute log.record.uid = PREFIX-i",
    )
    p.add_argument(
        "--timeout", type=float, default=5.0, help="exporter timeout in seconds (default 5)"
    )
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra request header (gRPC metadata), e.g. 'authorization=Bearer TOKEN'",
    )
    p.add_argument(
        "--attr",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further (string) attribute of every record; may replace the fixed ones",
    )
    p.add_argument(
        "--processor",
        choices=("batch", "simple"),
        default="batch",
        help="batch: one export request for all records (default); simple: one request per record",
    )
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be >= 1")
    return args


def key_values(option: str, pairs: list[str]) -> dict[str, str] | None:
    """KEY=VALUE arguments as a dict; None (after saying why) if one is not."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            print(f"send_audit: {option} {pair!r} is not KEY=VALUE", file=sys.stderr)
            return None
        out[key] = value
    return out


def recording_exporter_class(base: type) -> type:
    """Subclass an OTLP log exporter so the outcome of every export() call is kept."""

    class RecordingExporter(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._lock = threading.Lock()
            self.calls = 0
            self.failures = 0
            self.exported = 0  # records in export calls that returned SUCCESS

        def export(self, batch):
            try:
                result = super().export(batch)
            except Exception:
                with self._lock:
                    self.calls += 1
                    self.failures += 1
                raise
            with self._lock:
                self.calls += 1
                if result == LogRecordExportResult.SUCCESS:
                    self.exported += len(batch)
                else:
                    self.failures += 1
            return result

    RecordingExporter.__name__ = f"Recording{base.__name__}"
    return RecordingExporter


def make_exporter(protocol: str, endpoint: str, timeout: float, headers: dict[str, str]):
    """An https:// endpoint is TLS: the SDK takes the CA, and a client
    certificate and key for mTLS, from OTEL_EXPORTER_OTLP_CERTIFICATE,
    OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return recording_exporter_class(OTLPLogExporter)(
            endpoint=endpoint,
            insecure=not endpoint.startswith("https://"),
            timeout=timeout,
            headers=headers or None,
        )
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return recording_exporter_class(OTLPLogExporter)(
        endpoint=endpoint, timeout=timeout, headers=headers or None
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    # SDK/exporter diagnostics (export failures, retries) go to stderr.
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="send_audit: %(name)s: %(message)s"
    )

    resource = Resource.create({"service.name": args.service})
    tracer_provider = TracerProvider(resource=resource)
    tracer = tracer_provider.get_tracer(AUDIT_LOGGER_NAME)

    headers = key_values("--header", args.header)
    attrs = key_values("--attr", args.attr)
    if headers is None or attrs is None:
        return 2
    headers = {key.strip().lower(): value.strip() for key, value in headers.items()}
    exporter = make_exporter(args.protocol, args.endpoint, args.timeout, headers)
    if args.processor == "simple":
        processor = SimpleLogRecordProcessor(exporter)
    else:
        processor = BatchLogRecordProcessor(exporter)
    logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
    logger_provider.add_log_record_processor(processor)

    with warnings.catch_warnings():
        # 1.45.x marks the SDK's LoggingHandler deprecated in favour of
        # opentelemetry-instrumentation-logging's handler; it still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        handler = LoggingHandler(level=logging.INFO, logger_provider=logger_provider)

    audit_log = logging.getLogger(AUDIT_LOGGER_NAME)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False  # keep audit records off the stderr root handler
    audit_log.addHandler(handler)

    try:
        with tracer.start_as_current_span("audit-demo") as span:
            ctx = span.get_span_context()
            for i in range(args.count):
                extra = {
                    "user.id": args.actor,
                    "event.name": args.event,
                    "audit.outcome": "success",
                    "audit.target": "model/sdxl",
                    "client.address": "203.0.113.7",
                }
                if args.uid_prefix is not None:
                    extra["log.record.uid"] = f"{args.uid_prefix}-{i}"
                extra.update(attrs)
                # The body is passed as the message with no args, so '%' in it is not interpolated.
                audit_log.info(args.body, extra=extra)
    finally:
        audit_log.removeHandler(handler)
        handler.close()
        flushed = logger_provider.force_flush(timeout_millis=int(args.timeout * 1000) + 5000)
        logger_provider.shutdown()
        tracer_provider.shutdown()

    out = {
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "exported": exporter.exported,
    }
    print(json.dumps(out), flush=True)

    problems = []
    if not flushed:
        problems.append("force_flush did not complete")
    if exporter.failures:
        problems.append(f"{exporter.failures} of {exporter.calls} export call(s) failed")
    if exporter.exported != args.count:
        problems.append(f"exported {exporter.exported} of {args.count} record(s)")
    if problems:
        print(f"send_audit: FAILED: {'; '.join(problems)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
