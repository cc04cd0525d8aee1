"""Run the gateway alone: ``python -m fleet.gateway [--host 127.0.0.1] [--port 8001]``.

A dedicated gateway process serves only ``/v1/`` under uvicorn (uvloop, and httptools
with each response sent in one write: ``fleet.gateway.server``), does its database work
in a worker process (``GATEWAY_DB_PROCESS``), reads the same database as the panel, and
can be run as many times as traffic needs behind any TCP load balancer. Settings come
from the same environment variables as the panel (``DATABASE_URL``, ``GATEWAY_*``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fleet.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GATEWAY_PORT", "8001")))
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")
    import django
    import uvicorn

    django.setup()
    from django.conf import settings

    from fleet.gateway.app import Gateway, GatewayConfig
    from fleet.gateway.server import server_config

    config = dataclasses.replace(GatewayConfig.from_settings(), db_process=settings.GATEWAY_DB_PROCESS)
    uvicorn.Server(
        server_config(Gateway(config=config), host=args.host, port=args.port, log_level=args.log_level)
    ).run()


if __name__ == "__main__":
    main()
