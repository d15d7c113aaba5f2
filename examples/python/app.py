#!/usr/bin/env python3
"""nano-banana, audited: a stand-in for the seeds' Gradio image generator.

The seed app is a Gradio UI around one function, ``generate_image(prompt,
model, aspect_ratio) -> output path``, with a login and a gallery where users
delete their images. Here the same functions are driven by a tiny command line
(Gradio is not needed), each action in its own span as an instrumented web
framework would make, and every action is audited with ``auditrail_audit``.
The "model" draws no picture: it writes a small placeholder PNG.

    python app.py login --user alice --password wonderland
    python app.py generate --user alice --prompt "a banana on the moon" --aspect-ratio 16:9
    python app.py delete --user alice OUTPUT_PATH
    python app.py demo          # a whole session: failed and good login, two generations, a delete

Each action prints one JSON line (what it did, and its span's trace id); the
audit events go to OTEL_EXPORTER_OTLP_ENDPOINT (see auditrail_audit.py).
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import os
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from auditrail_audit import Actor, Auditor, acting_as

SERVICE = "nano-banana"
MODELS = ("gemini-2.5-flash-image", "gemini-3-pro-image-preview")
ASPECT_RATIOS = ("1:1", "3:4", "4:3", "9:16", "16:9")
# The demo's accounts (Gradio's `auth=` list in the seed).
USERS = {"alice": "wonderland", "bob": "builder"}
# The "generated image": a 1x1 yellow PNG.
PLACEHOLDER_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4/9AUAAT4AhZLkYulAAAAAElFTkSuQmCC"
)


@dataclass
class Client:
    host: str


@dataclass
class Request:
    """The parts of Gradio's ``gr.Request`` that the audit reads."""

    username: str | None
    client: Client
    headers: dict[str, str] = field(default_factory=dict)


# Spans are made (so records carry a trace id) but not exported here; an app
# would add its trace exporter (Jaeger, Tempo) to this provider.
trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE})))
tracer = trace.get_tracer("nano-banana.ui")
auditor = Auditor(SERVICE)


def output_dir() -> Path:
    path = Path(os.environ.get("NANO_BANANA_OUTPUT", Path(tempfile.gettempdir()) / "nano-banana"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@auditor.image_generation
def generate_image(
    prompt: str,
    model: str = MODELS[0],
    aspect_ratio: str = "1:1",
    request: Request | None = None,
) -> str:
    """Generates an image for ``prompt``; returns the path of the PNG."""
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(
            f"unsupported aspect ratio {aspect_ratio!r}; choose one of {', '.join(ASPECT_RATIOS)}"
        )
    path = output_dir() / f"{uuid.uuid4().hex}.png"
    path.write_bytes(PLACEHOLDER_PNG)
    return str(path)


def login(username: str, password: str, request: Request) -> bool:
    expected = USERS.get(username)
    ok = expected is not None and hmac.compare_digest(expected, password)
    auditor.login(
        username,
        success=ok,
        actor=Actor.from_request(request),
        reason=None if ok else "wrong user name or password",
    )
    return ok


def delete_image(path: str, request: Request) -> None:
    Path(path).unlink()
    auditor.image_deleted(path, actor=Actor.from_request(request))


def handle(action: str, request: Request, run: Callable[[], str | None]) -> dict:
    """Runs one UI action in its own span, as an instrumented web framework
    would: its span's ids, and the path it made or the error it showed."""
    with tracer.start_as_current_span(f"POST /{action}") as span:
        ids = span.get_span_context()
        result = {
            "action": action,
            "trace_id": format(ids.trace_id, "032x"),
            "span_id": format(ids.span_id, "016x"),
        }
        try:
            path = run()
        except Exception as error:  # the UI shows it; the audit event has it already
            result["error"] = str(error)
        else:
            if path is not None:
                result["path"] = path
        return result


def sign_in(username: str, password: str, request: Request) -> None:
    if not login(username, password, request):
        raise PermissionError("wrong user name or password")


def demo(client: Client, headers: dict[str, str]) -> list[dict]:
    """A session: a mistyped password, a login, a generation, a refused
    generation, and the delete of the generated image."""
    anonymous = Request(None, client, headers)
    alice = Request("alice", client, headers)
    steps = [
        handle("login", anonymous, lambda: sign_in("alice", "wonderlnad", anonymous)),
        handle("login", anonymous, lambda: sign_in("alice", "wonderland", anonymous)),
        handle(
            "generate",
            alice,
            lambda: generate_image(
                "a banana surfing a wave at sunset", "gemini-2.5-flash-image", "16:9", request=alice
            ),
        ),
        handle(
            "generate",
            alice,
            lambda: generate_image("a banana portrait", aspect_ratio="2:7", request=alice),
        ),
    ]
    steps.append(handle("delete", alice, lambda: delete_image(steps[2]["path"], alice)))
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-address", default="127.0.0.1", help="the user's address")
    parser.add_argument("--user-agent", default="nano-banana-cli", help="the user's device")
    actions = parser.add_subparsers(dest="action", required=True)
    p = actions.add_parser("login")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p = actions.add_parser("generate")
    p.add_argument("--user", required=True)
    p.add_argument("--prompt", required=True)
    p.add_argument("--model", default=MODELS[0])
    p.add_argument("--aspect-ratio", default="1:1")
    p = actions.add_parser("delete")
    p.add_argument("--user", required=True)
    p.add_argument("path")
    actions.add_parser("demo")
    args = parser.parse_args(argv)

    client = Client(args.client_address)
    headers = {"user-agent": args.user_agent}
    request = Request(getattr(args, "user", None), client, headers)
    try:
        if args.action == "demo":
            results = demo(client, headers)
        elif args.action == "login":
            anonymous = Request(None, client, headers)
            results = [
                handle("login", anonymous, lambda: sign_in(args.user, args.password, anonymous))
            ]
        elif args.action == "generate":
            # Code with no request at hand names the actor for a block instead.
            with acting_as(Actor.from_request(request)):
                run = lambda: generate_image(args.prompt, args.model, args.aspect_ratio)  # noqa: E731
                results = [handle("generate", request, run)]
        else:
            results = [handle("delete", request, lambda: delete_image(args.path, request))]
    finally:
        # Sends the batched events before the process ends (the provider's
        # exit hook would too; an explicit flush says so in one place).
        auditor.shutdown()
    for result in results:
        print(json.dumps(result), flush=True)
    # The demo's failures are on purpose; a single action's fail the command.
    return 0 if args.action == "demo" or "error" not in results[0] else 1


if __name__ == "__main__":
    sys.exit(main())
