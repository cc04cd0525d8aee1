"""The fleet domain: nodes, GPUs, pools, instances, policies, prices; the project wiring is ``fleet.project``.

Importing the package loads nothing else, so its pure parts (the policies, the trace
simulator) run without Django; ``FleetConfig.ready`` loads the Celery app in Django processes.
"""
