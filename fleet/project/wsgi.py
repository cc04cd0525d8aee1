"""WSGI entry point, for servers that do not speak ASGI (no live updates there)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")

application = get_wsgi_application()

from fleet.project.serving import loaded_app_freeze  # noqa: E402

loaded_app_freeze()
