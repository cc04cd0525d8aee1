"""The gateway's pick of an instance for a request, and the cool-down a failing one sits out.

One ``Picker`` serves each gateway process, and one each simulated fleet, so the trace
simulator routes requests exactly as the gateway does. Time is whatever clock the owner
keeps: the gateway's monotonic seconds, the simulator's simulated ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar


class Candidate(Protocol):
    """A ready instance as its owner lists it (the gateway's ``Upstream``, a simulated instance)."""

    @property
    def instance_id(self) -> int: ...


C = TypeVar("C", bound=Candidate)


class Picker:
    """Outstanding requests, picks and cool-downs per instance, and the pick that reads them."""

    def __init__(self, *, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self.outstanding: dict[int, int] = {}
        self.picks: dict[int, int] = {}
        self.cooldown: dict[int, float] = {}

    def pick(
        self,
        groups: Sequence[Sequence[int]],
        ready: Callable[[int], Iterable[C]],
        *,
        now: float,
        exclude: int | None = None,
    ) -> C | None:
        """The ready instance with the fewest outstanding requests in the first group of pools that has one.

        ``ready(pool_id)`` lists a pool's ready instances. Ties go to the instance picked
        least often, so an idle pool is used round-robin, then to the first listed. An
        instance cooling down after a failure is passed over until its cool-down ends.
        """
        outstanding, picks, cooldown = self.outstanding, self.picks, self.cooldown
        for group in groups:
            best: C | None = None
            # The best's rank: (outstanding, picks), compared in that order.
            best_outstanding, best_picks = 0, 0
            for pool_id in group:
                for candidate in ready(pool_id):
                    instance_id = candidate.instance_id
                    if instance_id == exclude:
                        continue
                    if cooldown:
                        until = cooldown.get(instance_id)
                        if until is not None:
                            if until > now:
                                continue
                            del cooldown[instance_id]
                    load, picked = outstanding.get(instance_id, 0), picks.get(instance_id, 0)
                    if best is None or load < best_outstanding or (load == best_outstanding and picked < best_picks):
                        best, best_outstanding, best_picks = candidate, load, picked
            if best is not None:
                picks[best.instance_id] = best_picks + 1
                return best
        return None

    def cool(self, instance_id: int, *, now: float) -> None:
        """Keep a failing instance out of picks for ``cooldown_s``."""
        self.cooldown[instance_id] = now + self.cooldown_s
