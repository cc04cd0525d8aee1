"""What a fleet pays for its GPUs when they are rented by the node, as clouds rent them.

An 8-GPU instance is one bill: it runs from the moment any of its GPUs is first taken
until every GPU on it is free again and the node is released. Stopping one engine on a
node whose other GPUs still work saves nothing; the freed card is paid for until the
node empties (or until other work is placed on it). A reserved fleet (``release`` off)
pays every node it ever used from that first use to the end.

GPUs are numbered from 1, ``gpus_per_node`` to a node: GPUs 1..n on node 1, n+1..2n on
node 2, and so on. With one GPU per node each GPU is its own bill, which is what the
simulator assumed before (a stopped GPU costs nothing).

Pure functions of hold intervals, so the simulator and its tests compute the bill the
same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

# One hold: a GPU taken from ``start`` to ``end`` seconds; ``end`` None while it is still taken.
Hold = tuple[int, float, float | None]


def node_of(gpu: int, gpus_per_node: int) -> int:
    """The node a GPU sits on (both numbered from 1)."""
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node must be at least 1, not {gpus_per_node}")
    return (gpu - 1) // gpus_per_node + 1


def node_billed_intervals(
    holds: Iterable[Hold], *, gpus_per_node: int, release: bool, end: float
) -> dict[int, list[tuple[float, float]]]:
    """Per node, the intervals it is billed: the union of its GPUs' holds where a node that
    empties is released, else one interval from its first hold to ``end`` (a hold still open
    runs to ``end``)."""
    by_node: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for gpu, start, stop in holds:
        by_node[node_of(gpu, gpus_per_node)].append((start, end if stop is None else stop))
    billed: dict[int, list[tuple[float, float]]] = {}
    for node, intervals in sorted(by_node.items()):
        intervals.sort()
        if not release:
            billed[node] = [(intervals[0][0], end)]
            continue
        merged: list[tuple[float, float]] = []
        for start, stop in intervals:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], stop))
            else:
                merged.append((start, stop))
        billed[node] = merged
    return billed


def node_billed_hours(holds: Iterable[Hold], *, gpus_per_node: int, release: bool, end: float) -> float:
    """Node-hours paid (a node's hour is ``gpus_per_node`` GPU-hours)."""
    billed = node_billed_intervals(holds, gpus_per_node=gpus_per_node, release=release, end=end)
    return sum(stop - start for intervals in billed.values() for start, stop in intervals) / 3600


def node_billed_now(*, taken_on_node: bool, used_before: bool, release: bool) -> bool:
    """Whether a node is being paid for at this moment: one of its GPUs is taken, or (a
    reserved fleet, ``release`` off) it was ever used. The live form of the rule above."""
    return taken_on_node or (used_before and not release)
