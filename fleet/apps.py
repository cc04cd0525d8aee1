from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The Celery app, so the tasks this process sends go to its broker; ``celery -A fleet.project`` finds it alone.
        import fleet.project.celery  # noqa: F401
