"""Template tags: the Plotly bundle's URL and a chart's mount point with its figure JSON."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django import template
from django.urls import reverse
from django.utils.html import format_html, json_script

from dashboard.views import PLOTLY_JS_VERSION
from fleet.costs.alerts import rule_kind_shown, threshold_shown
from fleet.policies.actions import duration

register = template.Library()
# An alert rule as the alerts page shows it, rendered as its notices render it.
register.filter("rule_kind_shown", rule_kind_shown)
register.filter("threshold_shown", threshold_shown)


@register.simple_tag
def plotly_js_url() -> str:
    return reverse("dashboard:plotly-js", args=[PLOTLY_JS_VERSION])


@register.simple_tag
def chart(figure: dict[str, Any], name: str, live: str = "", field: str = "", scale: float = 1.0) -> str:
    """A div that ``live.js`` draws the figure into; ``live`` names the events that extend it.

    The div is as tall as the figure: on a window resize Plotly drops the layout's height and
    takes the div's, which without one would shrink every chart to the div's minimum.
    """
    return format_html(
        '<div class="chart" id="chart-{}" style="height:{}px" data-figure="figure-{}" data-live="{}" data-field="{}"'
        ' data-scale="{}"></div>{}',
        name,
        int(figure["layout"]["height"]),
        name,
        live,
        field,
        scale,
        json_script(figure, f"figure-{name}"),
    )


@register.simple_tag(takes_context=True)
def with_query(context: dict[str, Any], **changes: Any) -> str:
    """The current query string with some parameters replaced (an empty value drops one)."""
    params = context["request"].GET.copy()
    for key, value in changes.items():
        if value in ("", None):
            params.pop(key, None)
        else:
            params[key] = value
    return "?" + urlencode(sorted(params.items()))


@register.filter
def seconds(value: float | timedelta | None) -> str:
    """A duration as decisions' reasons state one (``612`` -> ``10 min 12 s``); '–' for none."""
    if value is None:
        return "–"
    return duration(value.total_seconds() if isinstance(value, timedelta) else float(value))


@register.filter
def get(mapping: dict[str, Any], key: str) -> Any:
    """``mapping[key]`` in a template, or nothing."""
    return mapping.get(key, ())
