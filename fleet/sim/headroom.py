"""Room for growth in a settings search (``fleet.sim.tune``): its default, its bounds and how it is named.

Plain Python with no imports, so the tuning run's model holds the same bounds without loading the simulator.
"""

from __future__ import annotations

# Asked by default of a search from the admin or ``simulate_tune``: the settings chosen also meet the SLA at a
# quarter more traffic than the past they were tuned on, so the cheapest settings that only just meet it there
# are not what the pool gets the day its traffic grows. Traffic that grows faster asks for more.
DEFAULT_HEADROOM = 0.25
# The most room for growth a search may ask: four times the traffic replayed is a rehearsal of another pool.
MAX_HEADROOM = 3.0


def headroom_refused(headroom: float) -> str | None:
    """Why a search cannot ask for this headroom, or None: the one rule ``tune``, ``simulate_tune`` and
    ``tuning_run_create`` apply (the admin's form and the model's validators hold the same bounds)."""
    if not 0 <= headroom <= MAX_HEADROOM:
        return f"headroom ({headroom:g}) must lie within 0 and {MAX_HEADROOM:g}"
    return None


def headroom_traffic(headroom: float) -> str:
    """The traffic at the headroom, as the summary, the tuning run's page and the applied decision name it."""
    return f"{1 + headroom:g}x the traffic"
