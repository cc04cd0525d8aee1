"""In the simulator, a pool whose scale-ins the gateway undoes backs off as the panel's does: the same moves
read by the same autoscale, each undone scale-in doubling the wait before the next."""

from __future__ import annotations

import math

from fleet.sim.simulate import Simulation
from tests.sim.toy import toy_setup, trace_of

ONLY_AUTOSCALE = {"prewarm": None, "colocate": None, "reap": None, "idle_reclaim": None}
TICK_S = 30.0


def flapping(backoff_max_s: int) -> Simulation:
    """A 100-token prompt with a 1,000-token answer every 6 s for three hours, on two toy instances of
    ``max_num_seqs`` 4 that drain to scale in. Each answer decodes for about 12 s, so about two run at once: on
    two instances one each, a load of 25%, under the band (50%) and 50% on one fewer, inside it, so autoscale
    scales in. On one instance the third answer that overlaps is 3 of 4 sequences, 75% >= the band's top 65%,
    and the gateway scales out again within seconds: the linear guess fails every time."""
    setup = toy_setup(
        gpus=2,
        values={
            "pool": {"max_num_seqs": 4},
            "policies": {
                **ONLY_AUTOSCALE,
                "autoscale": {"scale_in_drain": True, "scale_in_backoff_max_s": backoff_max_s},
            },
        },
    )
    trace = trace_of(*[(6.0 * i, 100, 1000) for i in range(3 * 600)])
    simulation = Simulation(trace=trace, setup=setup, label="policy", initial_instances=2)
    simulation.run()
    return simulation


def moves_of(simulation: Simulation) -> list[tuple[float, str]]:
    return [(d.t_s, d.action) for d in simulation.decisions if d.action in ("scale_out", "scale_in")]


def test_each_undone_scale_in_doubles_the_wait_up_to_the_cap() -> None:
    """Autoscale evaluates every 30 s, so each scale-in comes at the first tick at or after the last scale-out plus
    300 s x 2^(scale-ins undone so far), at most 3,600 s: 300, 600, 1,200, 2,400, 3,600. Without the back-off it
    is 300 s every time, and it scales in and out again about every 330 s."""
    simulation = flapping(3600)
    moves = moves_of(simulation)
    assert [action for _, action in moves] == ["scale_in", "scale_out"] * (len(moves) // 2)
    outs = [at for at, action in moves if action == "scale_out"]
    ins = [at for at, action in moves if action == "scale_in"]
    assert all(0 < out - scaled_in <= 3600 for scaled_in, out in zip(ins, outs, strict=False))  # each one undone
    for undone, (out, scaled_in) in enumerate(zip(outs, ins[1:], strict=False), start=1):
        wait = min(300 * 2**undone, 3600)
        assert scaled_in == math.ceil((out + wait) / TICK_S) * TICK_S, (undone, out, scaled_in)
    assert len(ins) == 5  # 300, 600, 1,200, 2,400 and 3,600 s after each scale-out fill the three hours

    plain = moves_of(flapping(0))
    plain_outs = [at for at, action in plain if action == "scale_out"]
    plain_ins = [at for at, action in plain if action == "scale_in"]
    assert all(
        scaled_in == math.ceil((out + 300) / TICK_S) * TICK_S
        for out, scaled_in in zip(plain_outs, plain_ins[1:], strict=False)
    )
    assert len(plain_ins) > 30


def test_the_pool_view_carries_the_moves_the_decisions_record() -> None:
    """What autoscale reads in the simulator (``PoolView.scale_moves``) is what the panel reads from its decision
    log: the newest scale-outs and scale-ins, autoscale's and the gateway's, oldest first."""
    simulation = flapping(3600)
    [pool] = simulation.setup.pools
    view = simulation._pool_view(pool)
    seen = [((at - simulation.trace.start).total_seconds(), action) for at, action in view.scale_moves]
    assert seen == moves_of(simulation)
    assert {d.kind for d in simulation.decisions if d.action == "scale_out"} == {"gateway"}
