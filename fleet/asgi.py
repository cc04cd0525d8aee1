"""ASGI entry point: the gateway under /v1/, other HTTP through Django, WebSockets through Channels."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.settings")

django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from dashboard.routing import websocket_urlpatterns  # noqa: E402
from fleet.gateway.app import AsgiApp, Gateway, Receive, Scope, Send  # noqa: E402
from fleet.scheduler import scheduler_start  # noqa: E402

GATEWAY_PREFIX = "/v1/"


def http_router(gateway: Gateway, django_app: AsgiApp) -> AsgiApp:
    """Send ``/v1/`` to the gateway, which must not pay Django's request path; the rest to Django."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(GATEWAY_PREFIX):
            await gateway(scope, receive, send)
        else:
            await django_app(scope, receive, send)

    return app


def application_build(*, gateway: Gateway) -> ProtocolTypeRouter:
    """The whole panel around one gateway; tests build their own so each gets a fresh gateway."""
    return ProtocolTypeRouter(
        {
            "http": http_router(gateway, django_asgi_app),
            "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
        }
    )


gateway = Gateway()
application = application_build(gateway=gateway)

# Embedded default only (no Celery beat): run the periodic tasks in this process.
scheduler_start()
