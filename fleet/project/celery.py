"""The Celery app.

In the embedded default there is no broker: tasks run eagerly in the calling process.
In production the broker is Redis (``REDIS_URL``) and beat reads its schedule from the
database through django-celery-beat, so the schedule is edited in the admin.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")

app = Celery("fleet")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
