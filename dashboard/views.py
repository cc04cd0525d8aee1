"""Pages of the dashboard."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from fleet import selectors


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/index.html",
        {"nodes": selectors.nodes_overview(), "pools": selectors.pools_overview()},
    )
