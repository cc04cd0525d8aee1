"""The fleet domain: nodes, GPUs, pools, instances, policies, prices, and the project wiring."""

from fleet.celery import app as celery_app

__all__ = ["celery_app"]
