"""The project wiring: settings, URL map, ASGI/WSGI entry points, the Celery app, middleware.

Nothing here is the fleet domain; it assembles the domain packages into one Django project.
"""
