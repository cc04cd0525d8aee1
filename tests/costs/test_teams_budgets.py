"""Team shares that add up to the cent, budgets, and the gateway's block check."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet.costs.budgets import budget_block_lift, budgets_evaluate
from fleet.costs.money import money_cents
from fleet.costs.selectors import spend_report, team_budget_block, team_spend
from fleet.costs.teams import Basis, team_shares
from fleet.models import Budget, Team
from tests.costs.history import price, states, utc
from tests.factories import make_gpu, make_instance, make_node, make_pool

GPU = "Acme X1"


def test_equal_users_of_a_hundred_split_with_the_odd_cent_to_the_first() -> None:
    # 100.00 / 3 = 33.333..: floors 33.33 x 3 = 99.99, one cent left, equal remainders -> lowest id.
    assert team_shares(total=Decimal("100"), usage={3: Decimal(1), 1: Decimal(1), 2: Decimal(1)}) == {
        1: Decimal("33.34"),
        2: Decimal("33.33"),
        3: Decimal("33.33"),
    }


def test_the_largest_remainders_get_the_leftover_cents() -> None:
    # 15.20 by GPU-seconds 2:1 -> 10.1333.. and 5.0666..: floors 10.13 + 5.06 = 15.19; the cent goes to
    # the larger remainder (.67 > .33): 10.13 and 5.07.
    assert team_shares(total=Decimal("15.2"), usage={1: Decimal(2), 2: Decimal(1)}) == {
        1: Decimal("10.13"),
        2: Decimal("5.07"),
    }


def test_no_usage_gives_no_shares() -> None:
    assert team_shares(total=Decimal("5"), usage={1: Decimal(0)}) == {}


@given(
    total=st.decimals(min_value=0, max_value=10**7, places=6),
    usage=st.dictionaries(
        st.integers(1, 50), st.decimals(min_value=Decimal("0.001"), max_value=10**6, places=3), min_size=1
    ),
)
def test_shares_always_add_up_to_the_rounded_total_and_stay_within_a_cent(
    total: Decimal, usage: dict[int, Decimal]
) -> None:
    shares = team_shares(total=total, usage=usage)
    assert sum(shares.values()) == money_cents(total)
    used = sum(usage.values())
    for team, share in shares.items():
        assert abs(share - money_cents(total) * usage[team] / used) < Decimal("0.01")


def _pool_with_spend() -> tuple[int, Team, Team]:
    """A pool that spends 15.20 on 2025-01-31: 8 h at 1.90."""
    price(GPU, "1.9000", date(2025, 1, 1))
    pool = make_pool()
    instance = make_instance(pool, make_gpu(make_node(), model_name=GPU))
    states(instance, (utc(2025, 1, 31, 8), "ready"), (utc(2025, 1, 31, 16), "stopped"))
    return pool.pk, Team.objects.create(name="Search", slug="search"), Team.objects.create(name="Ads", slug="ads")


@pytest.mark.django_db
def test_team_spend_takes_usage_from_an_injected_source() -> None:
    pool_id, search, ads = _pool_with_spend()
    seen: list[tuple[datetime, datetime, Basis]] = []

    def source(*, start: datetime, end: datetime, basis: Basis) -> dict[tuple[int, int], Decimal]:
        seen.append((start, end, basis))
        return {(pool_id, search.pk): Decimal("7200"), (pool_id, ads.pk): Decimal("3600")}

    report = spend_report(start=utc(2025, 1, 31), end=utc(2025, 2, 1))
    shares = team_spend(report=report, usage_source=source, basis="tokens")
    assert shares == {pool_id: {search.pk: Decimal("10.13"), ads.pk: Decimal("5.07")}}
    assert seen == [(utc(2025, 1, 31), utc(2025, 2, 1), "tokens")]


@pytest.mark.django_db
def test_a_hard_budget_blocks_the_team_until_lifted_or_the_period_resets(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_BILLING_TIMEZONE = "UTC"
    pool_id, search, ads = _pool_with_spend()

    def source(**_: object) -> dict[tuple[int, int], Decimal]:
        return {(pool_id, search.pk): Decimal(2), (pool_id, ads.pk): Decimal(1)}

    budget = Budget(name="search daily", team=search, period="day", amount=Decimal("10.00"))
    budget.full_clean()
    budget.save()
    now = utc(2025, 1, 31, 18)

    (result,) = budgets_evaluate(now=now, usage_source=source)
    # Search's share of the day's 15.20 is 10.13: above 100% of 10.00, so it is blocked.
    assert (result.spent, result.blocked_now) == (Decimal("10.13"), True)
    message = team_budget_block(search.pk, now=now)
    assert message is not None and "Search" in message and "2025-02-01 00:00 UTC" in message
    assert team_budget_block(ads.pk, now=now) is None
    assert budgets_evaluate(now=now, usage_source=source)[0].blocked_now is False  # already blocked: announced once

    budget.refresh_from_db()
    assert budget_block_lift(budget=budget, now=now)
    assert team_budget_block(search.pk, now=now) is None
    assert budgets_evaluate(now=now, usage_source=source)[0].blocked_now is False  # the lift holds for the day

    budget.refresh_from_db()
    budget.lifted_period_start = None
    budget.save(update_fields=["lifted_period_start"])
    assert team_budget_block(search.pk, now=now) is not None
    assert team_budget_block(search.pk, now=utc(2025, 2, 1, 0, 1)) is None  # a new day, a new budget


@pytest.mark.django_db
def test_team_budgets_wait_for_a_usage_source_and_pool_budgets_do_not(settings) -> None:  # type: ignore[no-untyped-def]
    settings.FLEET_TEAM_USAGE_SOURCE = ""
    pool_id, search, _ = _pool_with_spend()
    Budget.objects.create(name="search", team=search, period="month", amount=Decimal("100"))
    Budget.objects.create(name="pool", pool_id=pool_id, period="month", amount=Decimal("100"), hard_threshold_pct=None)
    results = {row.note: row.spent for row in budgets_evaluate(now=utc(2025, 1, 31, 20))}
    assert results == {"no team usage source (FLEET_TEAM_USAGE_SOURCE)": None, "": Decimal("15.2")}


@pytest.mark.django_db
def test_the_default_usage_source_reads_the_gateway_request_log() -> None:
    from fleet.costs.teams import request_log_usage
    from fleet.models import RequestLog

    pool = make_pool()
    search, docs = Team.objects.create(name="Search", slug="search"), Team.objects.create(name="Docs", slug="docs")
    common = dict(pool=pool, endpoint="chat", model="m", rcf=1.0, tier="L", status=200)
    RequestLog.objects.create(
        at=utc(2025, 1, 10), team=search, prompt_tokens=100, output_tokens=20, latency_ms=1500, **common
    )
    RequestLog.objects.create(
        at=utc(2025, 1, 11), team=search, prompt_tokens=10, output_tokens=None, latency_ms=500, **common
    )
    RequestLog.objects.create(
        at=utc(2025, 1, 12), team=docs, prompt_tokens=7, output_tokens=3, latency_ms=250, **common
    )
    RequestLog.objects.create(
        at=utc(2025, 2, 1), team=docs, prompt_tokens=999, output_tokens=1, latency_ms=9000, **common
    )
    RequestLog.objects.create(
        at=utc(2025, 1, 12), team=None, prompt_tokens=5, output_tokens=5, latency_ms=100, **common
    )

    window = dict(start=utc(2025, 1, 1), end=utc(2025, 2, 1))
    # GPU-seconds: search 1.5 + 0.5 = 2.0, docs 0.25; February and team-less rows are out
    assert request_log_usage(**window, basis="gpu_seconds") == {
        (pool.pk, search.pk): Decimal("2.0"),
        (pool.pk, docs.pk): Decimal("0.25"),
    }
    # tokens: search 100 + 20 + 10 (no output counted as 0) = 130, docs 7 + 3 = 10
    assert request_log_usage(**window, basis="tokens") == {
        (pool.pk, search.pk): Decimal(130),
        (pool.pk, docs.pk): Decimal(10),
    }


@pytest.mark.django_db
def test_gpu_seconds_are_summed_exactly_whatever_order_the_database_adds_them_in() -> None:
    from fleet.costs.teams import request_log_usage
    from fleet.models import RequestLog

    pool = make_pool()
    search = Team.objects.create(name="Search", slug="search")
    common = dict(pool=pool, endpoint="chat", model="m", rcf=1.0, tier="L", status=200, team=search)
    for latency_ms in (100.1, 200.2, 0.0004):
        RequestLog.objects.create(at=utc(2025, 1, 10), latency_ms=latency_ms, **common)
    # 100.1 + 200.2 ms = 0.3003 s exactly (as floats 0.1001 + 0.2002 = 0.30029999999999996); the
    # 0.4 microseconds round away at the microsecond.
    usage = request_log_usage(start=utc(2025, 1, 1), end=utc(2025, 2, 1), basis="gpu_seconds")
    assert usage == {(pool.pk, search.pk): Decimal("0.3003")}
