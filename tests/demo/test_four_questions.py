"""The operator's questions, asked of the README's ``make run`` in Debian's Chromium, as a person clicks.

The demo is the one ``test_make_run`` opened first (``conftest.py``: one ``make run`` for the
session): a simulated fleet served by real agent processes, the real panel and its gateway
replaying a trace. In order:

1. How efficient is the fleet and what does idle cost? The overview's headline cards, read
   beside the costs page over the same span (the month to the last complete minute).
2. What did the system save? The savings page's reconciliation, whose figures must add up
   as it says (read from the page, to the cent).
3. What could be paid less? A pool minimum recommendation applied in one click, then found
   as a decision on the decisions page and in its detail.
4. Can I stop and start an instance? From the instance table, carried out by the simulated
   host's real agent: the instance goes to stopped, its engine process ends, then back to
   ready with a new engine process.
5. Which requests did one team send? The requests page filtered to a team that sent a few
   requests through the gateway, and its CSV export: the same rows, all that team's.

With ``FLEET_SCREENSHOTS=1`` the pages land in ``docs/screenshots/`` beside the first look's.
"""

from __future__ import annotations

import csv
import re
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import screenshot
from tests.support.demo_run import Demo, Problems, sign_in

pytestmark = pytest.mark.services

# A pool minimum recommendation needs the hour rollup of the pools' traffic and latency (the SLA
# met), rolled up each minute once the first minutes are complete: a few minutes after the demo starts.
RECOMMENDATION_BY_S = 420.0
# Busy and idle spend need engines serving for a while and their minutes rolled up.
BILLED_BY_S = 300.0
# An instance stops within a few of its agent's 2 s polls; it starts again after the
# simulated engine's 30 s cold start, on a loaded machine maybe twice that.
STOPPED_WITHIN_S = 90.0
READY_WITHIN_S = 180.0
# A decision's saving is attributed up to the last complete minute of rollups, a minute or two behind.
ATTRIBUTED_WITHIN_S = 180.0
# A key made in the admin reaches the gateway at its next refresh of keys and routes.
KEY_KNOWN_WITHIN_S = 60.0
# Instances tried before giving up when the policies decide otherwise for each meanwhile.
ATTEMPTS = 3
REQUESTS_SENT = 4
CENT = Decimal("0.01")
INSTANCE_LABEL = "gpufleet.instance"


def amount(text: str) -> Decimal:
    """The number in a figure as the page shows it ("12.34 USD", "-0.05")."""
    found = re.search(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    assert found, f"no number in {text!r}"
    return Decimal(found.group())


def card(page: Any, label: str) -> str:
    """The value of the costs page's card whose label starts with ``label``."""
    value = page.evaluate(
        """(label) => {
            const card = Array.from(document.querySelectorAll('.card'))
                .find((item) => item.querySelector('.label').innerText.startsWith(label));
            return card ? card.querySelector('.value').innerText : null;
        }""",
        label,
    )
    assert value is not None, f"no card {label!r} on {page.url}"
    return str(value)


def rollups_end(page: Any, demo: Demo) -> str:
    """The last complete minute of rollups, where the pages that read spend from them stop (the savings page says)."""
    page.goto(f"{demo.base}/savings/?range=1h")
    found = re.search(r"Both run over \S+ \S+ – (\S+ \S+) UTC", page.inner_text("main"))
    assert found, page.inner_text("main")
    return found.group(1)


def poll(what: str, check: Any, timeout_s: float, every_s: float = 2.0) -> Any:
    """``check()`` until it returns something true, or fail saying what never came."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s")


def no_problems(problems: Problems) -> None:
    assert problems.seen == [], "\n".join(problems.seen)


def test_the_overview_efficiency_and_idle_cost_are_the_costs_pages_figures(demo: Demo, page: Any) -> None:
    problems = Problems(page)
    sign_in(page, demo)
    problems.where = "overview"

    def billed() -> bool:  # engines busy and idle for a few minutes, rolled up
        page.goto(f"{demo.base}/")
        shown = page.inner_text("#headline-efficiency .value")
        return shown != "–" and amount(shown) > 0 and amount(page.inner_text("#headline-idle .value")) > 0

    poll("a busy share and an idle cost on the overview", billed, max(60.0, BILLED_BY_S - demo.running_s()), 5)
    # The headline runs from the start of the month to the last complete minute of rollups;
    # read it between two looks at that minute, so the costs page can be asked for the same span.
    for _ in range(5):
        end = rollups_end(page, demo)
        page.goto(f"{demo.base}/")
        month, efficiency, idle = (
            page.inner_text(f"#headline-{name} .value") for name in ("month", "efficiency", "idle")
        )
        if rollups_end(page, demo) == end:
            break
    else:
        raise AssertionError("the rollups moved on during every look at the overview")
    assert re.fullmatch(r"\d+%", efficiency), efficiency
    assert amount(idle) > 0, f"a fleet of simulated H100s up for minutes costs something idle: {idle}"

    problems.where = "costs"
    month_start = datetime.fromisoformat(end).replace(day=1, hour=0, minute=0)
    page.goto(f"{demo.base}/costs/?range=custom&start={month_start:%Y-%m-%dT%H:%M}&end={end.replace(' ', 'T')}")
    spend, busy = amount(card(page, "Spend in range")), amount(card(page, "Busy"))
    idle_allocated, unallocated = amount(card(page, "Idle")), amount(card(page, "Unallocated"))
    # One quantity each, rounded to the cent once on each page.
    assert amount(month) == spend, (month, spend)
    # The headline's idle cost is the costs page's idle plus unallocated: each rounded on its own.
    assert abs(amount(idle) - (idle_allocated + unallocated)) <= CENT, (idle, idle_allocated, unallocated)
    assert abs(spend - (busy + idle_allocated + unallocated)) <= CENT, (spend, busy, idle_allocated, unallocated)
    # Efficiency is busy over all of it, shown in whole percent; from cents it may be off by a point.
    share = 100 * busy / (busy + idle_allocated + unallocated)
    assert abs(amount(efficiency) - share) <= 1, (efficiency, share)

    problems.where = "alerts"
    page.goto(f"{demo.base}/")
    firing = set(page.locator("table#alerts tbody td:first-child").all_inner_texts())
    assert firing, "the demo's idle fleet fires no alert on the overview"
    page.goto(f"{demo.base}/alerts/")
    # The history names each rule with its kind: "demo: SLA breach (SLA breach)".
    history = {
        re.sub(r" \([^()]*\)$", "", rule)
        for rule in page.locator("table#alerts tbody td:nth-child(4)").all_inner_texts()
    }
    assert firing <= history, (firing, history)
    screenshot(page, "alerts", docs=True)
    no_problems(problems)


def test_a_pool_minimum_recommendation_applies_in_one_click_and_is_logged(demo: Demo, page: Any) -> None:
    problems = Problems(page)
    sign_in(page, demo)
    problems.where = "recommendations"
    row = page.locator('#recommendations tr[data-kind="pool_minimum"]')

    def listed() -> bool:
        page.goto(f"{demo.base}/recommendations/")
        return row.count() > 0

    poll("a pool minimum recommendation", listed, max(60.0, RECOMMENDATION_BY_S - demo.running_s()), 10)
    screenshot(page, "recommendations", docs=True)
    title, key = row.first.locator("td").first.inner_text(), row.first.get_attribute("data-key")
    pool = re.search(
        r"Pool (\S+) keeps at least (\d+) instances; its busiest hour of the last 7 days needed (\d+)", title
    )
    assert pool, title
    assert int(pool.group(3)) < int(pool.group(2)), title
    button = row.first.locator("button")
    setting = re.fullmatch(r"min_instances (\d+) → (\d+)", button.inner_text())
    assert setting and setting.group(1) == pool.group(2), button.inner_text()

    button.click()
    page.wait_for_url(f"{demo.base}/recommendations/")
    message = page.locator("#messages li").first.inner_text()
    done = re.fullmatch(
        rf"Decision (\d+): min_instances {setting.group(1)} → {setting.group(2)} on {pool.group(1)}\.", message
    )
    assert done, message
    assert page.locator(f'#recommendations tr[data-key="{key}"]').count() == 0, (
        "the applied recommendation is still listed"
    )

    problems.where = "decisions"
    decision = done.group(1)
    page.goto(f"{demo.base}/decisions/?range=1h&kind=manual")
    logged = page.locator(f'#decisions tr[data-decision="{decision}"]')
    assert logged.count() == 1, f"decision {decision} is not among the manual decisions"
    cells = logged.locator("td").all_inner_texts()
    assert cells[1] == "manual" and cells[3] == pool.group(1), cells
    assert f"recommendation applied by {demo.credentials()[0]}" in cells[6], cells
    logged.locator("a").first.click()
    page.wait_for_url(f"{demo.base}/decisions/{decision}/")
    detail = page.inner_text("main")
    assert "min_instances" in detail and pool.group(1) in detail, detail
    screenshot(page, "decision", docs=True)

    problems.where = "instances"
    page.goto(f"{demo.base}/instances/")
    scale = page.locator("#pool-scale tr", has=page.locator(f'a:text-is("{pool.group(1)}")'))
    assert scale.locator("td").nth(2).inner_text() == setting.group(2), "the pool's minimum did not change"
    no_problems(problems)


def engine_running(demo: Demo, instance: str) -> int | None:
    """The pid of the engine process the agent runs for an instance, if one runs."""
    for record in demo.engines():
        if record.get("labels", {}).get(INSTANCE_LABEL) == instance and record.get("status") == "running":
            pid = int(record["pid"])
            if Path(f"/proc/{pid}").exists():
                return pid
    return None


def instance_candidates(page: Any) -> list[str]:
    """Ready instances, those of pools at their minimum first: started again, such an instance
    leaves its pool at its minimum, where scaling in has nothing to take back."""
    at_minimum = {
        cells[0]
        for cells in (row.locator("td").all_inner_texts() for row in page.locator("#pool-scale tbody tr").all())
        if cells[1] == cells[2]
    }
    ready = [
        (row.locator("td").nth(1).inner_text() not in at_minimum, str(row.get_attribute("data-instance")))
        for row in page.locator("#instances tbody tr").all()
        if row.locator(".actual").inner_text() == "ready" and row.locator(".desired").inner_text() == "running"
    ]
    return [instance for _, instance in sorted(ready)]


def stop_and_start(page: Any, demo: Demo, instance: str) -> tuple[int, int] | None:
    """Stop an instance from its row and start it again; its engine process before and after,
    or None when a policy decided otherwise for it meanwhile (the fleet's policies keep running)."""
    page.goto(f"{demo.base}/instances/")
    row = page.locator(f'#instances tr[data-instance="{instance}"]')
    before = engine_running(demo, instance)
    assert before, f"instance {instance} is ready but its agent runs no engine for it"

    def act(action: str) -> None:
        row.locator(f'button[value="{action}"]').click()
        page.wait_for_url(f"{demo.base}/instances/")
        message = page.locator("#messages li").first.inner_text()
        assert re.match(rf"Decision \d+: {action}\b", message), message

    def reached(desired: str, state: str) -> str:
        """Whether the instance is at ``state``: "yes", "" (not yet) or "taken" (a policy wanted it otherwise)."""
        page.goto(f"{demo.base}/instances/")
        if row.locator(".desired").inner_text() != desired:
            return "taken"
        return "yes" if row.locator(".actual").inner_text() == state else ""

    act("stop")
    if poll(f"instance {instance} stopped", lambda: reached("stopped", "stopped"), STOPPED_WITHIN_S) == "taken":
        return None
    assert not Path(f"/proc/{before}").exists(), f"instance {instance} is stopped but its engine {before} still runs"
    act("start")
    engines: list[int | None] = []

    def ready_again() -> str:
        # Ready as the agent reported it, with the engine process it started anew (read at that moment).
        shown = reached("running", "ready")
        if shown == "yes":
            engines.append(engine_running(demo, instance))
            return "yes" if engines[-1] not in (None, before) else ""
        return shown

    if poll(f"instance {instance} ready again", ready_again, READY_WITHIN_S, every_s=1.0) == "taken":
        return None
    after = engines[-1]
    assert after is not None
    return before, after


def test_an_instance_stops_and_starts_from_the_table_through_its_agent(demo: Demo, page: Any) -> None:
    problems = Problems(page)
    sign_in(page, demo)
    problems.where = "instances"
    page.goto(f"{demo.base}/instances/")
    candidates = instance_candidates(page)
    assert candidates, "no ready instance in the table"
    tried = []
    for instance in candidates[:ATTEMPTS]:
        tried.append(instance)
        if pids := stop_and_start(page, demo, instance):
            break
    else:
        raise AssertionError(f"a policy took back every instance tried ({tried}) before it was ready again")
    before, after = pids
    assert after != before
    screenshot(page, "instances", docs=True)

    problems.where = "decisions"
    page.goto(f"{demo.base}/decisions/?range=1h&kind=manual")
    actions = [
        cells[2]
        for cells in (row.locator("td").all_inner_texts() for row in page.locator("#decisions tbody tr").all())
        if cells[4] == instance
    ]
    assert actions[:2] == ["start", "stop"], actions  # newest first
    no_problems(problems)


def test_the_savings_page_reconciles_attributed_savings_with_the_headline(demo: Demo, page: Any) -> None:
    problems = Problems(page)
    sign_in(page, demo)
    problems.where = "savings"

    def kinds_shown() -> dict[str, Decimal]:
        page.goto(f"{demo.base}/savings/?range=1h")
        rows = page.locator("#by-kind tbody tr:not(.none)").all()
        return {cells[0]: amount(cells[1]) for cells in (row.locator("td").all_inner_texts() for row in rows)}

    # The instance stopped from the table was stopped by a decision: once the minutes it was
    # stopped are rolled up, its effect is attributed, by kind and by pool.
    poll("the manual stop among the attributed savings", lambda: "manual" in kinds_shown(), ATTRIBUTED_WITHIN_S, 10)
    kinds = kinds_shown()
    attributed, headline = amount(page.inner_text("#attributed")), amount(page.inner_text("#headline"))
    text = " ".join(page.inner_text("#reconciliation").split())
    found = re.fullmatch(
        r"Attributed (-?[\d.]+), headline (-?[\d.]+) \w+: headline = attributed − (-?[\d.]+) still paid for GPUs that"
        r" stayed up with nothing on them \(reclaimable\) \+ (-?[\d.]+) from capacity changed outside decisions\.",
        text,
    )
    assert found, text
    said_attributed, said_headline, reclaimable, outside = (Decimal(value) for value in found.groups())
    assert (said_attributed, said_headline) == (attributed, headline)
    # The page's outside is worked out from the other figures as shown: the sum holds to the cent.
    assert headline == attributed - reclaimable + outside, (headline, attributed, reclaimable, outside)
    assert "manual" in kinds, kinds
    for table in ("by-kind", "by-pool", "by-day"):
        amounts = [
            amount(text) for text in page.locator(f"#{table} tbody tr:not(.none) td:nth-child(2)").all_inner_texts()
        ]
        assert abs(sum(amounts) - attributed) <= CENT * len(amounts), (table, amounts, attributed)
    screenshot(page, "savings", docs=True)

    # The manual kind nets the stop's saving against the start's cost (the start costs from
    # when it was applied on), so its sign depends on timing; each decision's own rate does not:
    # the stop saves what the start costs, the instance's share of its GPU at the price in effect.
    problems.where = "decisions"
    page.goto(f"{demo.base}/decisions/?range=1h&kind=manual")
    effects: dict[str, str] = {}
    for cells in (row.locator("td").all_inner_texts() for row in page.locator("#decisions tbody tr").all()):
        if cells[2] in ("stop", "start") and cells[2] not in effects:  # newest first
            effects[cells[2]] = cells[5]
    saved = re.match(r"saves ([\d.]+)/h", effects.get("stop", ""))
    cost = re.match(r"costs ([\d.]+)/h", effects.get("start", ""))
    assert saved and cost, effects
    assert Decimal(saved.group(1)) > 0, effects
    assert saved.group(1) == cost.group(1), effects
    no_problems(problems)


def team_key_create(page: Any, demo: Demo, team: str) -> str:
    """A team and an API key for it, made in the admin as an operator does; the key's secret is shown once."""
    page.goto(f"{demo.base}/admin/fleet/team/add/")
    page.fill("#id_name", team)
    page.fill("#id_slug", re.sub(r"[^a-z0-9]+", "-", team.lower()).strip("-"))
    page.click("input[name=_save]")
    page.wait_for_url(f"{demo.base}/admin/fleet/team/")
    page.goto(f"{demo.base}/admin/fleet/apikey/add/")
    page.select_option("#id_team", label=team)
    page.fill("#id_name", "walk-through")
    page.click("input[name=_save]")
    secret = re.search(r"store it now\): (\S+)", page.inner_text("body"))
    assert secret, page.inner_text("body")
    return secret.group(1)


def test_the_requests_page_filters_to_one_team_and_exports_the_same_rows(demo: Demo, page: Any, tmp_path: Path) -> None:
    problems = Problems(page)
    sign_in(page, demo)
    problems.where = "admin"
    team = "Walk-through team"
    key = team_key_create(page, demo, team)
    model = demo.output.wait_for(r"serving (\S+)", demo.process).group(1)
    with httpx.Client(base_url=demo.base, timeout=120, headers={"Authorization": f"Bearer {key}"}) as client:

        def ask(index: int) -> httpx.Response:
            body = {"model": model, "messages": [{"role": "user", "content": f"question {index}"}], "max_tokens": 8}
            return client.post("/v1/chat/completions", json=body)

        first = poll(
            "the new key known to the gateway", lambda: (r := ask(0)).status_code != 401 and r, KEY_KNOWN_WITHIN_S
        )
        assert first.status_code == 200, first.text
        for index in range(1, REQUESTS_SENT):
            response = ask(index)
            assert response.status_code == 200, response.text

    problems.where = "requests"
    page.goto(f"{demo.base}/requests/?range=1h")
    others = page.locator("#requests tbody tr td:nth-child(3)").all_inner_texts()
    assert others and set(others) != {team}, "the unfiltered page shows only the team: the filter would prove nothing"
    page.select_option("#filters select[name=team]", label=team)
    page.select_option("#filters select[name=per]", label="200")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*[?&]team=\d+"))
    rows = page.locator("#requests tbody tr")

    def logged() -> bool:
        page.reload()
        return rows.count() >= REQUESTS_SENT

    poll(f"the {REQUESTS_SENT} requests in the log", logged, 60)
    shown = {str(row.get_attribute("data-request")): row.locator("td").nth(2).inner_text() for row in rows.all()}
    assert set(shown.values()) == {team} and len(shown) == REQUESTS_SENT, shown
    screenshot(page, "requests-team", docs=True)

    with page.expect_download() as download:
        page.click("#export-requests")
    path = tmp_path / "export.csv"
    download.value.save_as(path)
    with path.open(newline="") as lines:
        exported = list(csv.DictReader(lines))
    assert {row["team"] for row in exported} == {team}, exported
    assert len(exported) == len(shown) and {row["id"] for row in exported} == set(shown), (exported, shown)

    problems.where = "request"
    first = min(shown, key=int)
    page.click(f'#requests tr[data-request="{first}"] a')
    page.wait_for_url(f"{demo.base}/requests/{first}/")
    assert team in page.inner_text("main")
    screenshot(page, "request", docs=True)
    no_problems(problems)
