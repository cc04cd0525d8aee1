"""Pages of the dashboard: every one needs a signed-in user; policy editing stays in the admin."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import plotly
from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required, permission_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.http import require_GET

from dashboard import figures
from dashboard import selectors as pages
from dashboard.forms import JoinTokenForm
from fleet import selectors
from fleet.costs.selectors import billing_currency
from fleet.decide.services import join_token_create
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


def _range_context(request: HttpRequest) -> tuple[pages.TimeRange, dict[str, object]]:
    time_range = pages.time_range_parse(params=request.GET)
    return time_range, {"range": time_range, "ranges": list(pages.RANGES), "live_groups": [FLEET_GROUP]}


@login_required
def index(request: HttpRequest) -> HttpResponse:
    time_range, context = _range_context(request)
    grid = pages.gpu_utilization_grid(time_range=time_range)
    live_range = pages.TimeRange(key="1h", start=timezone.now() - timedelta(hours=1), end=timezone.now())
    live = pages.gpu_series_by_gpu(gpus=pages.gpus(live=True), time_range=live_range)
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
            title="GPU utilization, live (%)",
            unit="utilization (%)",
            span=live_range.span,
        ),
        has_gpus=bool(live),
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
    metric = item.get_sla_metric_display()
    context.update(
        pool=item,
        live_groups=[pool_group(item.pk)],
        instances=pages.pool_instances(pool=item),
        latency=figures.pool_latency(
            history=history, sla_ms=item.sla_latency_ms, sla_label=item.sla_label, metric=metric, span=time_range.span
        )
        if history
        else None,
        queue=figures.pool_queue(history=history, span=time_range.span) if history else None,
        longer_range_helps=not history and pages.pool_history_before(pool=item, before=time_range.start),
        states=figures.instance_states(states=states, span=time_range.span) if states["at"] else None,
        traffic=figures.tier_traffic(counts=traffic) if traffic else None,
        decisions=pages.decisions_filtered(time_range=time_range, pool_id=item.pk, limit=20),
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


def _padded(time_range: pages.TimeRange) -> tuple[datetime, datetime]:
    """The range with a little room at its end, so the newest point is drawn whole."""
    return time_range.start, time_range.end + (time_range.end - time_range.start) / 50


@login_required
def decisions(request: HttpRequest) -> HttpResponse:
    time_range, context = _range_context(request)
    kind = request.GET.get("kind", "")
    pool_id = int(request.GET["pool"]) if request.GET.get("pool", "").isdigit() else None
    rows = pages.decisions_filtered(time_range=time_range, kind=kind, pool_id=pool_id)
    context.update(
        decisions=rows,
        kinds=pages.decision_kinds(),
        pools=pages.pools(),
        kind=kind,
        pool_id=pool_id,
        timeline=figures.decisions_timeline(decisions=rows, span=_padded(time_range)) if rows else None,
        live_groups=[pool_group(pool_id)] if pool_id else [FLEET_GROUP],
    )
    return render(request, "dashboard/decisions.html", context)


@login_required
def requests_page(request: HttpRequest) -> HttpResponse:
    pool_id = int(request.GET["pool"]) if request.GET.get("pool", "").isdigit() else None
    tier = request.GET.get("tier", "") if request.GET.get("tier", "") in ("S", "M", "L") else ""
    rows = pages.requests_recent(pool_id=pool_id, tier=tier)
    context = {
        "requests": rows,
        "pools": pages.pools(),
        "pool_id": pool_id,
        "tier": tier,
        "tiers": ("S", "M", "L"),
        "latency": figures.request_latency(requests=rows) if rows else None,
        "any_requests": bool(rows) or pages.requests_any(),
    }
    return render(request, "dashboard/requests.html", context)


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
