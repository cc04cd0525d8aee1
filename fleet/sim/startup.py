"""How long an engine takes to start, drawn from a stated distribution.

A start is the sum of what it has to do, in order:

1. **provision** the node (``node_provision_s``) when the node is not already paid for:
   a node newly acquired, or one released when it emptied;
2. **pull** the container image (``image_pull_s``) unless it is on the node
   (probability ``image_present_p``);
3. **download** the weights (weight bytes / ``download_bytes_per_s``) unless they are
   cached on the node (probability ``weights_cached_p``);
4. **load** them from the page cache into the GPU and start the server: the engine's
   ``cold_start_s`` (30 s, vLLM's figure), jittered by the setup's ``start_jitter``.

A start fails with probability ``failure_p``, at the end of its draw (the server exits
after loading, as a CUDA out-of-memory at KV-cache allocation does). The instance is then
``failed`` and keeps its GPU (it is still desired running); the agent's reconciliation
replaces the container on its next pass (``restart_after_s``), which is a new start.

The default is what the simulator did before: weights cached, image present, node
provisioned, no failures, so only the jittered load remains. Each start draws three
uniforms (cached, image, failure) from the simulation's start-up random stream, whatever
the probabilities, so a setting changes only what it is about.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ColdStartModel:
    weights_cached_p: float = 1.0
    # 500 MB/s: a busy model hub or object store as seen from one node.
    download_bytes_per_s: float = 500e6
    image_present_p: float = 1.0
    # A vLLM image is some 10 GB; two minutes at 80 MB/s from a registry.
    image_pull_s: float = 120.0
    node_provision_s: float = 0.0
    failure_p: float = 0.0
    # The agent's report and reconciliation interval (``AgentConfig.interval_s``).
    restart_after_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("weights_cached_p", "image_present_p", "failure_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability, not {value}")
        if self.download_bytes_per_s <= 0:
            raise ValueError("download_bytes_per_s must be positive")


@dataclass(frozen=True)
class StartDraw:
    """One start as drawn: what it had to do and how long each part took."""

    at_s: float
    weights_cached: bool
    image_present: bool
    provisioned: bool
    provision_s: float
    pull_s: float
    download_s: float
    load_s: float
    fails: bool

    @property
    def total_s(self) -> float:
        return self.provision_s + self.pull_s + self.download_s + self.load_s


def start_draw(
    model: ColdStartModel,
    rng: random.Random,
    *,
    at_s: float,
    load_s: float,
    weight_bytes: int,
    node_fresh: bool,
) -> StartDraw:
    """Draw one start at ``at_s``: ``load_s`` is the page-cache load already jittered,
    ``node_fresh`` whether the node must be provisioned first."""
    cached = rng.random() < model.weights_cached_p
    present = rng.random() < model.image_present_p
    fails = rng.random() < model.failure_p
    return StartDraw(
        at_s=at_s,
        weights_cached=cached,
        image_present=present,
        provisioned=node_fresh,
        provision_s=model.node_provision_s if node_fresh else 0.0,
        pull_s=0.0 if present else model.image_pull_s,
        download_s=0.0 if cached else weight_bytes / model.download_bytes_per_s,
        load_s=load_s,
        fails=fails,
    )
