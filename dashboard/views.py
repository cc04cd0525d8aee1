"""Pages of the dashboard: every one needs a signed-in user; policy editing stays in the admin."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TypedDict

import plotly
from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required, permission_required
from django.contrib.humanize.templatetags.humanize import naturaltime
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from dashboard import figures
from dashboard import selectors as pages
from dashboard.forms import JoinTokenForm
from fleet import selectors
from fleet.costs.effects import COSTS, SAVES, DecisionEffect
from fleet.costs.money import money_cents
from fleet.costs.recommendations import BAND_STEP, BAND_TOP_MAX
from fleet.costs.selectors import billing_currency
from fleet.decide.evaluate import pool_scale as scale_pool
from fleet.decide.services import (
    INSTANCE_MANUAL_ACTIONS,
    ActionRefused,
    SettingsRefused,
    StaleGeneration,
    instance_manual,
    join_token_create,
    pool_setting_claim,
)
from fleet.events import FLEET_GROUP, node_group, pool_group
from fleet.telemetry.agent_dist import install_command, install_problems, panel_url

PLOTLY_JS = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
PLOTLY_JS_VERSION = plotly.__version__
YEAR_S = 365 * 24 * 3600
GIB = 1024**3


@require_GET
def plotly_js(request: HttpRequest, version: str) -> HttpResponse:
    """Plotly's bundle from the installed ``plotly`` package: hosts may reach no CDN.

    The URL names the package version, so the file may be cached for a year: an upgrade
    changes the URL. Served without login, like any static file; it holds no data. Read
    whole rather than streamed: under ASGI a file stream is read synchronously anyway.
    """
    if version != PLOTLY_JS_VERSION:
        raise Http404("no such Plotly version here")
    response = HttpResponse(PLOTLY_JS.read_bytes(), content_type="text/javascript; charset=utf-8")
    response["Cache-Control"] = f"public, max-age={YEAR_S}, immutable"
    return response


# The refresh picker's choices; the URL may ask for any period down to REFRESH_MIN_S (refresh=10s).
REFRESH_CHOICES = (("off", ""), ("30s", "30s"), ("1m", "1m"), ("5m", "5m"))
REFRESH_MIN_S = 5
REFRESH_MAX_S = 24 * 3600
REFRESH_UNITS = {"s": 1, "m": 60, "h": 3600}


def refresh_parse(value: str) -> dict[str, object]:
    """The period a page re-renders itself on, from ``refresh=30s|1m|5m`` (or any ``<n>s|m|h``).

    Off when absent; a period it cannot read, or shorter than ``REFRESH_MIN_S`` (a page a few
    seconds apart would keep the panel busy rendering), leaves it off and says why on the page.
    """
    value = value.strip()
    if value in ("", "off"):
        return {"key": "", "seconds": 0, "error": ""}
    number, unit = value[:-1], value[-1:]
    seconds = int(number) * REFRESH_UNITS[unit] if number.isdigit() and unit in REFRESH_UNITS else None
    if seconds is None or not REFRESH_MIN_S <= seconds <= REFRESH_MAX_S:
        return {
            "key": "",
            "seconds": 0,
            "error": f"refresh={value!r} ignored: give a period of {REFRESH_MIN_S} s to 24 h, such as 30s, 1m or 5m",
        }
    return {"key": value, "seconds": seconds, "error": ""}


def refresh_context(request: HttpRequest) -> dict[str, object]:
    """What the range bar's refresh picker (``_refresh.html``) shows: the period asked and the choices."""
    return {
        "refresh": refresh_parse(request.GET.get("refresh", "")),
        "refresh_choices": REFRESH_CHOICES,
        "refresh_values": [value for _, value in REFRESH_CHOICES],
    }


def _range_context(request: HttpRequest) -> tuple[pages.TimeRange, dict[str, object]]:
    time_range = pages.time_range_parse(params=request.GET)
    return time_range, {
        "range": time_range,
        "ranges": list(pages.RANGES),
        "live_groups": [FLEET_GROUP],
        **refresh_context(request),
    }


@login_required
def index(request: HttpRequest) -> HttpResponse:
    time_range, context = _range_context(request)
    grid = pages.gpu_utilization_grid(time_range=time_range)
    # The live chart streams each GPU's readings over the last hour: the page's range when that is
    # 1h, and on the default range too, where it says it does not follow the range. Any other
    # range is drawn from the heatmap's rollups over that range, one line a row.
    streams = time_range.key in ("1h", pages.DEFAULT_RANGE)
    live_range = (
        time_range
        if time_range.key == "1h"
        else pages.TimeRange(key="1h", start=timezone.now() - timedelta(hours=1), end=timezone.now())
    )
    live = pages.gpu_series_by_gpu(gpus=pages.gpus(live=True), time_range=live_range) if streams else []
    attainment = pages.sla_attainment(time_range=time_range)
    context.update(
        nodes=selectors.nodes_overview(),
        pools=selectors.pools_overview(),
        spend=pages.spend_summary(),
        alerts=pages.alerts_firing(),
        attainment=attainment,
        heatmap=figures.utilization_heatmap(grid=grid, span=time_range.span) if grid["at"] else None,
        live_figure=figures.gpu_lines(
            series=live,
            field="utilization",
            title="GPU utilization, live (%)" if time_range.key == "1h" else "GPU utilization, live: last hour (%)",
            unit="utilization (%)",
            span=live_range.span,
        )
        if streams
        else figures.utilization_lines(grid=grid, span=time_range.span)
        if grid["at"]
        else None,
        live_streams=streams,
        live_last_hour=streams and time_range.key != "1h",
        has_gpus=bool(live) if streams else pages.gpus(live=True).exists(),
        longer_range_helps=not grid["at"] and pages.gpu_history_before(gpus=pages.gpus(), before=time_range.start),
        sla_figure=figures.sla_attainment(rows=attainment)
        if any(r["attainment"] is not None for r in attainment)
        else None,
    )
    return render(request, "dashboard/index.html", context)


@login_required
def pool(request: HttpRequest, pool_id: int) -> HttpResponse:
    item = get_object_or_404(pages.pools(), pk=pool_id)
    time_range, context = _range_context(request)
    history = pages.pool_history(pool=item, time_range=time_range)
    states = pages.instance_states_over_time(pool=item, time_range=time_range)
    traffic = pages.tier_traffic(pool=item, time_range=time_range)
    decisions = pages.decisions_filtered(time_range=time_range, pool_id=item.pk, limit=20)
    metric = item.get_sla_metric_display()
    context.update(
        pool=item,
        live_groups=[pool_group(item.pk)],
        instances=pages.pool_instances(pool=item),
        latency=figures.pool_latency(
            history=history,
            sla_ms=item.sla_latency_ms,
            sla_label=item.sla_label,
            metric=metric,
            span=time_range.span,
            sla_per_1k_prompt_tokens=item.sla_ms_per_1k_prompt_tokens,
        )
        if history
        else None,
        queue=figures.pool_queue(history=history, span=time_range.span) if history else None,
        longer_range_helps=not history and pages.pool_history_before(pool=item, before=time_range.start),
        states=figures.instance_states(states=states, span=time_range.span) if states["at"] else None,
        traffic=figures.tier_traffic(counts=traffic) if traffic else None,
        decisions=_decision_lines(pages.decisions_effects(decisions=decisions, time_range=time_range)),
    )
    return render(request, "dashboard/pool.html", context)


@login_required
def node(request: HttpRequest, node_id: int) -> HttpResponse:
    item = get_object_or_404(pages.nodes(), pk=node_id)
    time_range, context = _range_context(request)
    series = pages.gpu_series_by_gpu(gpus=pages.gpus(node_id=item.pk), time_range=time_range)
    has_data = any(gpu["at"] for gpu in series)
    context.update(
        node=pages.node_detail(node_id=item.pk),
        live_groups=[] if item.decommissioned_at else [node_group(item.pk)],
        charts=[
            figures.gpu_lines(series=series, field=field, title=title, unit=unit, span=time_range.span, scale=scale)
            for field, title, unit, scale in (
                ("utilization", "Utilization (duty cycle)", "utilization (%)", 1.0),
                ("memory_used", "Memory used", "memory used (GiB)", GIB),
                ("power", "Power draw", "power (W)", 1.0),
                ("temperature", "Temperature (hottest in bucket)", "temperature (°C)", 1.0),
            )
        ]
        if has_data
        else [],
        longer_range_helps=not has_data
        and pages.gpu_history_before(gpus=pages.gpus(node_id=item.pk), before=time_range.start),
    )
    return render(request, "dashboard/node.html", context)


@login_required
def costs(request: HttpRequest) -> HttpResponse:
    time_range, context = _range_context(request)
    cost = pages.cost_page(time_range=time_range)
    budgets = pages.budgets_burn()
    currency = cost.currency
    context.update(
        cost=cost,
        currency=currency,
        total=cost.report.total,
        over_time=figures.spend_over_time(buckets=cost.over_time, currency=currency, span=time_range.span)
        if cost.over_time["at"]
        else None,
        by_pool=figures.spend_by_pool(rows=cost.by_pool, currency=currency) if cost.by_pool else None,
        by_team=figures.spend_by_team(rows=cost.by_team, currency=currency) if cost.by_team else None,
        per_million=figures.cost_per_million_tokens(rows=cost.per_million_tokens, currency=currency)
        if any(row["cost"] is not None for row in cost.per_million_tokens)
        else None,
        budgets=budgets,
        budget_figure=figures.budget_burn(rows=budgets, currency=billing_currency()) if budgets else None,
    )
    return render(request, "dashboard/costs.html", context)


@login_required
def decisions(request: HttpRequest) -> HttpResponse:
    time_range, context = _range_context(request)
    kind = request.GET.get("kind", "")
    pool_id = int(request.GET["pool"]) if request.GET.get("pool", "").isdigit() else None
    person = request.GET.get("person", "")
    policy_id = int(request.GET["policy"]) if request.GET.get("policy", "").isdigit() else None
    rows = pages.decisions_filtered(
        time_range=time_range, kind=kind, pool_id=pool_id, person=person, policy_id=policy_id
    )
    context.update(
        decisions=_decision_lines(pages.decisions_effects(decisions=rows, time_range=time_range)),
        kinds=pages.decision_kinds(),
        pools=pages.pools(),
        people=pages.decision_people(),
        policies=pages.decision_policies(),
        kind=kind,
        pool_id=pool_id,
        person=person,
        policy_id=policy_id,
        currency=billing_currency(),
        timeline=figures.decisions_timeline(decisions=rows, span=time_range.span) if rows else None,
        live_groups=[pool_group(pool_id)] if pool_id else [FLEET_GROUP],
    )
    return render(request, "dashboard/decisions.html", context)


class DecisionLine(TypedDict):
    """One row of a decisions table (``_decisions_table.html``), every cell worked out.

    A template's filters and ``{% url %}`` run per row cost more than the rest of a page of five
    hundred decisions, and each attribute it looks up on an object costs it a failed item lookup
    first: worked out here as a dict, the table only places strings. ``policy_url`` and
    ``pool_url`` are empty for a person's decision and one about the fleet; ``effect`` is what the
    Effect column says (``effect_text``), ``effect_title`` its arithmetic.
    """

    pk: int
    url: str
    at: str
    ago: str
    kind: str
    policy_url: str
    action: str
    pool: str
    pool_url: str
    instance_id: int | None
    effect: str
    effect_title: str
    reason: str


def effect_text(effect: DecisionEffect | None) -> str:
    """A decision's effect as its table says it: "saves 0.50/h, 12.00 so far" (the amount once any
    time is priced), "costs ..." for capacity it added, "–" for none."""
    if effect is None or effect.direction not in (SAVES, COSTS):
        return "–"
    verb = "saves" if effect.direction == SAVES else "costs"
    text = f"{verb} {_cents_text(effect.per_hour_shown)}/h"
    return f"{text}, {_cents_text(effect.amount_shown)} so far" if effect.lines else text


def _cents_text(amount: Decimal | None) -> str:
    """An amount to the cent, half up, as ``floatformat:2`` writes it ("" for none): a page of
    five hundred effects formats a thousand amounts, and the filter's localisation is most of it."""
    return "" if amount is None else f"{money_cents(amount):f}"


def _url_format(name: str) -> str:
    """The URL of the view ``name`` for any one id, as a ``str.format`` pattern: reversed once for
    a table's rows rather than once a row."""
    return reverse(name, args=[URL_MARKER]).replace(str(URL_MARKER), "{}")


# An id no table shows, standing for each row's in a reversed URL (``_url_format``).
URL_MARKER = 987654321987654321


def _decision_lines(decisions: list[pages.Decision]) -> list[DecisionLine]:
    """The rows of a decisions table; each pool's and policy's link reversed once."""
    pool_urls = _urls("dashboard:pool", {item.pool_id for item in decisions if item.pool_id})
    policy_urls = _urls("admin:fleet_policy_change", {item.policy_id for item in decisions if item.policy_id})
    url, tz = _url_format("dashboard:decision"), timezone.get_current_timezone()
    lines = []
    for item in decisions:
        effect: DecisionEffect | None = getattr(item, "effect", None)
        lines.append(
            DecisionLine(
                pk=item.pk,
                url=url.format(item.pk),
                at=timezone.localtime(item.created_at, tz).strftime("%Y-%m-%d %H:%M:%S"),
                ago=naturaltime(item.created_at),
                kind=item.policy_kind,
                policy_url=policy_urls[item.policy_id] if item.policy_id else "",
                action=item.action,
                pool=item.pool.name if item.pool else "",
                pool_url=pool_urls[item.pool_id] if item.pool_id else "",
                instance_id=item.instance_id,
                effect=effect_text(effect),
                effect_title=effect.arithmetic() if effect is not None else "",
                reason=item.reason,
            )
        )
    return lines


@login_required
def decision(request: HttpRequest, decision_id: int) -> HttpResponse:
    """One decision for an audit: its inputs as recorded, its effect and the arithmetic of it."""
    found = pages.decision_detail(decision_id=decision_id)
    if found is None:
        raise Http404("no such decision")
    item, effect = found
    context = {
        "decision": item,
        "effect": effect,
        "inputs": json.dumps(item.inputs, indent=2, sort_keys=True, default=str),
        "currency": billing_currency(),
    }
    return render(request, "dashboard/decision.html", context)


@login_required
def savings(request: HttpRequest) -> HttpResponse:
    """What decisions saved over the range, by kind, pool and day, reconciled with the savings headline."""
    time_range, context = _range_context(request)
    context.update(page=pages.savings_page(time_range=time_range), currency=billing_currency())
    return render(request, "dashboard/savings.html", context)


INSTANCE_PERMISSION = "fleet.change_instance"


@login_required
def instances(request: HttpRequest) -> HttpResponse:
    """Every instance as a table to act on; the buttons show only to users who may change instances."""
    table = pages.instances_page()
    # Links reversed once per pool and node rather than once per row: a thousand GPUs' rows
    # would spend more on reversing the same few URLs than on the rest of the table.
    instances = [row.instance for row in table.rows]
    context = {
        "table": table,
        "currency": table.currency,
        "can_act": request.user.has_perm(INSTANCE_PERMISSION),
        "actions": INSTANCE_BUTTONS,
        "pool_urls": _urls("dashboard:pool", {item.pool_id for item in instances}),
        "node_urls": _urls("dashboard:node", {item.gpu.node_id for item in instances if item.gpu}),
    }
    return render(request, "dashboard/instances.html", context)


def _urls(name: str, ids: Iterable[int]) -> dict[int, str]:
    """The URL of each of ``ids`` for the view ``name``, reversed once each, for a table's links."""
    return {pk: reverse(name, args=[pk]) for pk in ids}


# The buttons each desired state offers, from the actions the service accepts.
INSTANCE_BUTTONS = {
    state: [action for action, (_, applies_to) in INSTANCE_MANUAL_ACTIONS.items() if state in applies_to]
    for state in ("running", "sleeping", "stopped")
}


def _posted_int(request: HttpRequest, name: str) -> int | None:
    value = request.POST.get(name, "")
    return int(value) if value.lstrip("-").isdigit() else None


def _posted_number(request: HttpRequest, name: str) -> int | float | None:
    """A whole number or a finite decimal (a band top, 0.65) as posted; None for anything else."""
    whole = _posted_int(request, name)
    if whole is not None:
        return whole
    try:
        number = float(request.POST.get(name, ""))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


@login_required
@permission_required(INSTANCE_PERMISSION, raise_exception=True)
@require_POST
def instance_action(request: HttpRequest, instance_id: int) -> HttpResponse:
    """Start, stop, sleep or wake one instance, claimed on the generation the page showed."""
    item = pages.instance_for_action(instance_id=instance_id)
    if item is None:
        raise Http404("no such instance")
    action, generation = request.POST.get("action", ""), _posted_int(request, "generation")
    if generation is None:
        messages.error(request, f"Instance {instance_id} not changed: the form carried no generation.")
        return redirect("dashboard:instances")
    try:
        decision = instance_manual(
            instance=item, action=action, generation=generation, user=request.user.get_username()
        )
    except StaleGeneration as exc:
        messages.error(
            request,
            f"Instance {instance_id} not changed: it changed since the page was loaded ({exc}). "
            "Look at its row again and retry.",
        )
    except ActionRefused as exc:
        messages.error(request, f"Instance {instance_id} not changed: {exc}.")
    else:
        messages.success(request, f"Decision {decision.pk}: {decision.action} — {decision.reason}.")
    return redirect("dashboard:instances")


@login_required
@permission_required(INSTANCE_PERMISSION, raise_exception=True)
@require_POST
def pool_scale(request: HttpRequest, pool_id: int) -> HttpResponse:
    """+1 or -1 instance for a pool, within its minimum and maximum, claimed on the count the page showed."""
    item = pages.pool_for_action(pool_id=pool_id)
    if item is None:
        raise Http404("no such pool")
    delta, seen = _posted_int(request, "delta"), _posted_int(request, "active")
    if delta is None or seen is None:
        messages.error(request, f"Pool {item.name} not scaled: the form carried no step or no instance count.")
        return redirect("dashboard:instances")
    try:
        decision = scale_pool(pool=item, delta=delta, active_seen=seen, user=request.user.get_username())
    except StaleGeneration as exc:
        messages.error(
            request, f"Pool {item.name} not scaled: it changed since the page was loaded ({exc}). Look again and retry."
        )
    except ActionRefused as exc:
        messages.error(request, f"Pool {item.name} not scaled: {exc}.")
    else:
        messages.success(request, f"Decision {decision.pk}: {decision.action} — {decision.reason}.")
    return redirect("dashboard:instances")


POOL_PERMISSION = "fleet.change_pool"


@login_required
def recommendations(request: HttpRequest) -> HttpResponse:
    """What the fleet could stop paying for, each with its saving a month; settings apply in one click."""
    rows = pages.recommendations_list()
    context = {
        "recommendations": rows,
        "currency": billing_currency(),
        "can_apply": request.user.has_perm(POOL_PERMISSION),
        "band_step": BAND_STEP,
        "band_top_max": BAND_TOP_MAX,
    }
    return render(request, "dashboard/recommendations.html", context)


@login_required
@permission_required(POOL_PERMISSION, raise_exception=True)
@require_POST
def recommendation_apply(request: HttpRequest) -> HttpResponse:
    """Apply one recommendation that is a pool setting, claimed on the value the page showed.

    The recommendation is looked up again as it stands now: one that no longer applies, or
    whose setting changed since the page was loaded, is refused and nothing changes.
    """
    key, seen = request.POST.get("key", ""), _posted_number(request, "current")
    item = pages.recommendation_find(key=key)
    if item is None or not item.applicable or item.pool_id is None:
        messages.error(request, f"Nothing changed: recommendation {key!r} no longer applies. Look at the list again.")
        return redirect("dashboard:recommendations")
    if seen is None or seen != item.current:
        messages.error(
            request,
            f"Nothing changed: {item.setting} is {item.current} now, not {seen} as the page showed. Look again.",
        )
        return redirect("dashboard:recommendations")
    pool_item = pages.pool_for_action(pool_id=item.pool_id)
    if pool_item is None:
        raise Http404("no such pool")
    try:
        decision = pool_setting_claim(
            pool=pool_item,
            name=item.setting,
            seen=seen,
            value=item.proposed,
            user=request.user.get_username(),
            reason=f"recommendation applied by {request.user.get_username()}: {item.title} ({item.arithmetic})",
        )
    except StaleGeneration as exc:
        messages.error(request, f"Nothing changed: the pool changed since the page was loaded ({exc}). Look again.")
    except SettingsRefused as exc:
        messages.error(request, f"Nothing changed: {exc}.")
    else:
        messages.success(
            request, f"Decision {decision.pk}: {item.setting} {seen} → {item.proposed} on {pool_item.name}."
        )
    return redirect("dashboard:recommendations")


@staff_member_required
@permission_required("fleet.add_jointoken", raise_exception=True)
def hosts_add(request: HttpRequest) -> HttpResponse:
    """Create a join token and show the one line to run on new hosts, then the hosts as they join.

    The token is in this response only: reloading the page does not show it again. A join
    token lets a machine into the fleet, so it takes the same permission as adding one in
    the admin, not merely staff status.
    """
    form = JoinTokenForm(request.POST or None)
    context: dict[str, object] = {
        "form": form,
        "panel": panel_url(request),
        "panel_from_setting": bool(settings.PANEL_URL),
        "problems": install_problems(request),
        "ttl_hours": settings.JOIN_TOKEN_DEFAULT_TTL_HOURS,
    }
    if request.method == "POST" and form.is_valid():
        token, secret = join_token_create(
            name=form.cleaned_data["name"],
            max_uses=form.cleaned_data["max_uses"],
            expires_at=timezone.now() + timedelta(hours=form.cleaned_data["valid_hours"]),
        )
        context.update(token=token, command=install_command(request, secret), joined=[])
    context["recent"] = selectors.join_tokens_recent()
    return render(request, "dashboard/hosts_add.html", context)
