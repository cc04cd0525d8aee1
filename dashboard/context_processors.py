"""What every page, the admin's included, needs to know: whether the fleet it shows is simulated."""

from __future__ import annotations

from django.http import HttpRequest

from fleet.selectors import fleet_simulated_hosts


def simulated_fleet(request: HttpRequest) -> dict[str, int]:
    """How many simulated hosts are in the fleet, for the banner that says so on every page."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    return {"simulated_hosts": fleet_simulated_hosts()}
