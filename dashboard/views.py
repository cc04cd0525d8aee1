"""Pages of the dashboard."""

from __future__ import annotations

from datetime import timedelta

from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone

from dashboard.forms import JoinTokenForm
from fleet import selectors
from fleet.agent_dist import install_command
from fleet.services import join_token_create


@login_required
def index(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "dashboard/index.html",
        {"nodes": selectors.nodes_overview(), "pools": selectors.pools_overview()},
    )


@staff_member_required
@permission_required("fleet.add_jointoken", raise_exception=True)
def hosts_add(request: HttpRequest) -> HttpResponse:
    """Create a join token and show the one line to run on new hosts, then the hosts as they join.

    The token is in this response only: reloading the page does not show it again. A join
    token lets a machine into the fleet, so it takes the same permission as adding one in
    the admin, not merely staff status.
    """
    form = JoinTokenForm(request.POST or None)
    context: dict[str, object] = {"form": form}
    if request.method == "POST" and form.is_valid():
        token, secret = join_token_create(
            name=form.cleaned_data["name"],
            max_uses=form.cleaned_data["max_uses"],
            expires_at=timezone.now() + timedelta(hours=form.cleaned_data["valid_hours"]),
        )
        context.update(token=token, command=install_command(request, secret), joined=[])
    context["recent"] = selectors.join_tokens_recent()
    return render(request, "dashboard/hosts_add.html", context)
