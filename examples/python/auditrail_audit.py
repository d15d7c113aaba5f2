"""Audit events from a Python app to auditrail, with the OpenTelemetry SDK.

Copy this file into your app. It needs ``opentelemetry-sdk`` and
``opentelemetry-exporter-otlp`` (pip) and nothing from auditrail: the events
are plain OTLP log records, so they can go to auditrail directly or through
an OpenTelemetry Collector.

    auditor = Auditor("nano-banana")          # once, at start-up

    @auditor.image_generation                 # prompt, parameters, output, status, duration
    def generate_image(prompt, model, aspect_ratio, request=None) -> str: ...

    auditor.login("alice", success=False, actor=Actor.from_request(request))
    auditor.image_deleted(path, actor=Actor.from_request(request))

Where the events go is read from the standard OpenTelemetry variables:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (default ``http://localhost:4318``, or
``http://localhost:4317`` for gRPC), ``OTEL_EXPORTER_OTLP_PROTOCOL``
(``http/protobuf``, the default, or ``grpc``) and ``OTEL_EXPORTER_OTLP_HEADERS``
(``authorization=Bearer%20<token>`` when auditrail has writer tokens); the
``OTEL_EXPORTER_OTLP_LOGS_*`` variants take precedence.

Each event uses the attribute keys auditrail maps to its canonical fields
(auditrail's README, "The audit event"): the event name is the log
record's ``event_name``; ``user.id`` and ``user.name`` are the actor,
``client.address`` where the request came from, ``audit.outcome`` success or
failure, ``audit.target`` what was acted on, the body the prompt, and
``log.record.uid`` a unique id, so a retried export is stored once. The
record carries the trace context that is current when it is emitted (the
request's span, when the web framework is instrumented), so auditrail can
link each event to its trace.

Records are batched and sent in the background; they are flushed when the
process exits (and by ``Auditor.shutdown()``).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource

# The keys auditrail reads its canonical fields from.
USER_ID = "user.id"
USER_NAME = "user.name"
CLIENT_ADDRESS = "client.address"
OUTCOME = "audit.outcome"
TARGET = "audit.target"
RECORD_UID = "log.record.uid"
# Further attributes, named as the seeds' audit table columns map them
# (docs/sinks.md, "Legacy tables"), so a MySQL sink can fill that table.
DEVICE_NAME = "device.name"
DURATION_MS = "duration_ms"
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"

# Arguments of an image-generation function recorded as attributes, by
# argument name: the model under GenAI semantic conventions' name.
IMAGE_PARAMETERS = {
    "model": "gen_ai.request.model",
    "aspect_ratio": "image.aspect_ratio",
}


@dataclass(frozen=True)
class Actor:
    """Who acted, and from where."""

    user_id: str
    user_name: str | None = None
    client_address: str | None = None
    device_name: str | None = None

    @classmethod
    def from_request(cls, request: Any) -> Actor:
        """The actor of a Gradio ``gr.Request`` (or anything shaped like one:
        ``username``, ``client.host``, ``headers``)."""
        client = getattr(request, "client", None)
        headers = getattr(request, "headers", None) or {}
        return cls(
            user_id=request.username or "anonymous",
            user_name=request.username,
            client_address=getattr(client, "host", None),
            device_name=headers.get("user-agent"),
        )

    def attributes(self) -> dict[str, str]:
        pairs = {
            USER_ID: self.user_id,
            USER_NAME: self.user_name,
            CLIENT_ADDRESS: self.client_address,
            DEVICE_NAME: self.device_name,
        }
        return {key: value for key, value in pairs.items() if value}


# The actor of the request being handled, for code that cannot pass a request.
_current_actor: contextvars.ContextVar[Actor | None] = contextvars.ContextVar(
    "auditrail_actor", default=None
)


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    """Makes ``actor`` the actor of every event emitted inside the block."""
    token = _current_actor.set(actor)
    try:
        yield actor
    finally:
        _current_actor.reset(token)


def exporter_from_env() -> LogRecordExporter:
    """The OTLP log exporter that the standard environment variables ask for.

    The exporters read the endpoint, headers, timeout and TLS files from the
    environment themselves; the SDK leaves the choice of protocol to the app.
    """
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        return OTLPLogExporter()
    raise ValueError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the Python SDK's OTLP log "
        "exporters speak 'grpc' and 'http/protobuf'"
    )


class Auditor:
    """Emits audit events as OTLP log records through its own LoggerProvider,
    so the app's other logs never mix with them."""

    def __init__(
        self,
        service_name: str,
        *,
        exporter: LogRecordExporter | None = None,
        resource_attributes: Mapping[str, str] | None = None,
    ) -> None:
        resource = Resource.create({"service.name": service_name, **(resource_attributes or {})})
        # shutdown_on_exit: the provider's atexit hook flushes what is still
        # batched when the process ends normally.
        self._provider = LoggerProvider(resource=resource, shutdown_on_exit=True)
        self._provider.add_log_record_processor(
            BatchLogRecordProcessor(exporter or exporter_from_env())
        )
        self._logger = self._provider.get_logger("auditrail_audit")

    def event(
        self,
        name: str,
        *,
        success: bool,
        actor: Actor | None = None,
        target: str | None = None,
        body: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> str:
        """Emits one audit event; returns its id (``log.record.uid``).

        ``actor`` defaults to the one set by ``acting_as``. The record takes
        the current span's trace context.
        """
        uid = uuid.uuid4().hex
        actor = actor or _current_actor.get()
        attrs: dict[str, Any] = {RECORD_UID: uid, OUTCOME: "success" if success else "failure"}
        if actor is not None:
            attrs.update(actor.attributes())
        if target:
            attrs[TARGET] = target
        attrs.update(attributes or {})
        self._logger.emit(
            timestamp=time.time_ns(),
            event_name=name,
            severity_number=SeverityNumber.INFO if success else SeverityNumber.WARN,
            severity_text="INFO" if success else "WARN",
            body=body,
            attributes=attrs,
        )
        return uid

    def login(
        self,
        user_id: str,
        *,
        success: bool,
        actor: Actor | None = None,
        reason: str | None = None,
    ) -> str:
        """A ``user.login`` event; ``reason`` says why a login failed. The
        actor is the user who tried, whether or not the login succeeded."""
        base = actor or _current_actor.get() or Actor(user_id)
        who = Actor(user_id, user_id, base.client_address, base.device_name)
        attributes = {ERROR_MESSAGE: reason} if reason else None
        return self.event("user.login", success=success, actor=who, attributes=attributes)

    def image_deleted(self, path: str, *, actor: Actor | None = None) -> str:
        """An ``image.delete`` event whose target is the deleted file."""
        return self.event("image.delete", success=True, actor=actor, target=path)

    def image_generation(
        self,
        func: Callable[..., str] | None = None,
        *,
        prompt: str = "prompt",
        parameters: Mapping[str, str] = IMAGE_PARAMETERS,
    ) -> Any:
        """Decorates an image-generation function that returns the output
        path: each call becomes an ``image.generate`` event.

        The body is the argument named ``prompt``; the arguments named in
        ``parameters`` become the attributes they map to; the returned path
        is the target; a raised exception makes the outcome a failure with
        its message, and is raised again. The actor comes from a Gradio-style
        ``request`` argument when the function has one, else from
        ``acting_as``.
        """

        def decorate(generate: Callable[..., str]) -> Callable[..., str]:
            signature = inspect.signature(generate)

            @functools.wraps(generate)
            def audited(*args: Any, **kwargs: Any) -> str:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                arguments = bound.arguments
                request = arguments.get("request")
                actor = Actor.from_request(request) if request is not None else None
                attributes = {
                    key: arguments[name]
                    for name, key in parameters.items()
                    if arguments.get(name) is not None
                }
                started = time.monotonic()

                def record(output: str | None, error: Exception | None) -> None:
                    attributes[DURATION_MS] = round((time.monotonic() - started) * 1000)
                    if error is not None:
                        attributes[ERROR_TYPE] = type(error).__qualname__
                        attributes[ERROR_MESSAGE] = str(error)
                    self.event(
                        "image.generate",
                        success=error is None,
                        actor=actor,
                        target=output,
                        body=arguments.get(prompt),
                        attributes=attributes,
                    )

                try:
                    output = generate(*args, **kwargs)
                except Exception as error:
                    record(None, error)
                    raise
                record(str(output), None)
                return output

            return audited

        return decorate(func) if func is not None else decorate

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Sends what is batched; False if it did not finish in time."""
        return self._provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flushes and stops; later events are dropped."""
        self._provider.shutdown()
