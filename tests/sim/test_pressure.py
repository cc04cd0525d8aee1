"""The simulator scales out under the gateway's pressure at the request that shows it, as the gateway does."""

from __future__ import annotations

from fleet.sim.simulate import Simulation
from tests.sim.toy import toy_setup, trace_of

ONLY_AUTOSCALE = {"autoscale": {}, "prewarm": None, "colocate": None, "reap": None, "idle_reclaim": None}


def run(*requests: tuple[float, int, int]) -> Simulation:
    """One warm instance of a pool of max_num_seqs 4, band top 0.65: pressure from 4 x 0.65 = 2.6 outstanding."""
    setup = toy_setup(values={"pool": {"max_num_seqs": 4, "util_band_high": 0.65}, "policies": ONLY_AUTOSCALE})
    simulation = Simulation(trace=trace_of(*requests), setup=setup, label="policy")
    simulation.run()
    return simulation


def test_the_third_long_request_on_one_instance_scales_out_at_once() -> None:
    """Three 2,000-token answers (each decodes for 20 s and more) arrive 0.1 s apart: at the third, 3
    outstanding / 1 ready = 3 of 4 sequences = 75% >= 65%, so the gateway scales out at 0.2 s, long
    before the first policy evaluation (30 s); once per cool-down (60 s), however long they run."""
    simulation = run((0.0, 100, 2000), (0.1, 100, 2000), (0.2, 100, 2000), (0.3, 100, 2000))
    outs = [(d.t_s, d.kind, d.action) for d in simulation.decisions if d.action == "scale_out"]
    assert outs[0] == (0.2, "gateway", "scale_out")
    assert [at for at, kind, _ in outs if kind == "gateway"] == [0.2]


def test_two_long_requests_do_not() -> None:
    """2 of 4 sequences = 50% < 65%: no scale-out from the gateway."""
    simulation = run((0.0, 100, 2000), (0.1, 100, 2000))
    assert not [d for d in simulation.decisions if d.kind == "gateway" and d.action == "scale_out"]
