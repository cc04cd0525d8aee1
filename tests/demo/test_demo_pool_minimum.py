"""The demo's S pool keeps two exclusive cards warm where the fleet has the cards for it, so the
recommendations page has a pool minimum to price; on a smaller fleet it keeps one."""

from __future__ import annotations

import pytest

from fleet.demo.runner import DemoOptions, demo_prepare
from fleet.models import Pool

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("hosts", "gpus_per_host", "gpu", "s_minimum"),
    [(2, 2, "H100", 2), (1, 4, "H100", 2), (1, 3, "H100", 1), (1, 2, "H100", 1), (2, 2, "L4", 2), (1, 2, "L4", 1)],
)
def test_the_s_pool_keeps_two_cards_warm_only_where_the_other_pools_keep_theirs(
    hosts: int, gpus_per_host: int, gpu: str, s_minimum: int
) -> None:
    """Four cards: two for S, one for L (shared with M without MIG) and the MIG card for M; fewer: S keeps one."""
    options = DemoOptions(speedup=10, hosts=hosts, gpus_per_host=gpus_per_host, gpu=gpu)
    setup = demo_prepare(options=options)
    pools = {pool.tier: pool for pool in Pool.objects.filter(name__in=setup.pools)}
    assert (pools["S"].min_instances, pools["S"].max_instances) == (s_minimum, 2)
    assert pools["M"].min_instances == pools["L"].min_instances == 1
    # Cards the minimums hold: S's exclusive ones, the MIG card if M has one, a card the shared pools share.
    shared = [pool for pool in pools.values() if pool.isolation == Pool.Isolation.SHARED]
    held = s_minimum + (1 if options.mig else 0) + (1 if shared else 0)
    assert held <= hosts * gpus_per_host
