"""ASGI entry point: the gateway under /v1/, other HTTP through Django, WebSockets through Channels."""

import io
import os
from typing import cast

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.handlers.asgi import ASGIRequest  # noqa: E402

from agents.protocol import MAX_BODY_BYTES, WAIT_PATH  # noqa: E402
from dashboard.routing import websocket_urlpatterns  # noqa: E402
from fleet.gateway.app import AsgiApp, Gateway, Message, Receive, Scope, Send  # noqa: E402
from fleet.project.scheduler import scheduler_start  # noqa: E402
from fleet.project.serving import loaded_app_freeze  # noqa: E402
from fleet.telemetry.agent_api import wait  # noqa: E402

GATEWAY_PREFIX = "/v1/"


async def agent_wait(scope: Scope, receive: Receive, send: Send) -> None:
    """The agents' long poll (``agent_api.wait``) without Django's middleware around it.

    A wait is held for up to ``WAIT_S`` by every host at once. Behind a sync-only middleware
    (WhiteNoise, the CSP header) Django would give each held wait a thread of its own; called
    here, a wait is a coroutine on the server's loop. It needs none of what the middleware adds:
    no session, no CSRF (a bearer token), no static files, and its answer is JSON for an agent.
    """
    response = await wait(ASGIRequest(scope, io.BytesIO()))
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in response.items()]
    headers.append((b"content-length", str(len(response.content)).encode()))
    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": response.content})


def http_router(gateway: Gateway, django_app: AsgiApp) -> AsgiApp:
    """Send ``/v1/`` to the gateway, which must not pay Django's request path, the agents' long
    poll to ``agent_wait``, the rest to Django."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(GATEWAY_PREFIX):
            await gateway(scope, receive, send)
        elif scope["path"] == WAIT_PATH:
            await agent_wait(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    return app


class BodyTooLarge(Exception):
    """The client sent more than the panel takes."""


def body_limited(app: AsgiApp, *, limit: int) -> AsgiApp:
    """Refuse a request body over ``limit`` bytes before the app has read it.

    Django's ASGI handler spools the whole body to a file before any view runs, so a view's
    own size check would come after the upload: a declared length over the limit is
    refused at once, an undeclared (chunked) one as soon as the bytes received pass it.
    """

    async def refuse(send: Send) -> None:
        body = f"request body larger than {limit} bytes\n".encode()
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def limited(scope: Scope, receive: Receive, send: Send) -> None:
        declared = next((value for name, value in scope["headers"] if name == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await refuse(send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge
            return message

        try:
            await app(scope, counted, send)
        except BodyTooLarge:
            await refuse(send)

    return limited


def scheduler_started(app: AsgiApp) -> AsgiApp:
    """Start the embedded default's scheduler when a server starts serving ``app``, never at import.

    uvicorn (``make run``, the demo) says it is starting through the ASGI lifespan protocol;
    daphne (``runserver``) has none, so there the first request or socket starts it. Importing
    this module (a test, a shell, a management command) starts nothing.
    """
    started = False

    async def served(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal started
        if not started:
            started = True
            scheduler_start()
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return served


def application_build(*, gateway: Gateway, body_limit: int = MAX_BODY_BYTES) -> ProtocolTypeRouter:
    """The whole panel around one gateway; tests build their own so each gets a fresh gateway.

    No page or API of the panel takes a body larger than an agent's report.
    """
    return ProtocolTypeRouter(
        {
            # Django's handler types ASGI messages as read-only mappings, the gateway's as dicts.
            "http": http_router(gateway, body_limited(cast(AsgiApp, django_asgi_app), limit=body_limit)),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )


gateway = Gateway()
# The embedded default (no Celery beat) runs the periodic tasks in the serving process.
application = scheduler_started(application_build(gateway=gateway))
loaded_app_freeze()
