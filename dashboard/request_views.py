"""The requests page and its detail, the CSV exports, and the alert history; every one needs a signed-in user.

Exports take what the page they are linked from requires (a signed-in user, as the requests
and costs pages do) and the same checked filters: a bad value is refused with a message, never
exported as if it were no filter.
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib.auth.decorators import login_required
from django.core.handlers.asgi import ASGIRequest
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from dashboard import figures
from dashboard import request_log as log
from dashboard import selectors as pages
from dashboard.views import refresh_context
from fleet.events import FLEET_GROUP

STREAM_CHUNK_LINES = 500


class _Echo:
    """A file-like object whose write returns the line: csv.writer then yields lines to a stream."""

    def write(self, value: str) -> str:
        return value


def _csv_lines(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    writer = csv.writer(_Echo())
    yield writer.writerow(header)
    for row in rows:
        yield writer.writerow(row)


async def _in_chunks(lines: Iterator[str]) -> AsyncIterator[str]:
    """The lines a chunk at a time, each read in the thread that holds the database connection."""
    take = sync_to_async(lambda: "".join(itertools.islice(lines, STREAM_CHUNK_LINES)), thread_sensitive=True)
    while chunk := await take():
        yield chunk


def _csv_response(request: HttpRequest, lines: Iterator[str], *, filename: str) -> StreamingHttpResponse:
    """A CSV download streamed as it is read. Under ASGI, Django would read a plain iterator whole
    before sending a byte, so there the lines go out through an asynchronous iterator instead."""
    content: Iterator[str] | AsyncIterator[str] = _in_chunks(lines) if isinstance(request, ASGIRequest) else lines
    response = StreamingHttpResponse(content, content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _refused(errors: list[str]) -> HttpResponse:
    return HttpResponse(
        "Not exported: " + " ".join(errors) + "\n", status=400, content_type="text/plain; charset=utf-8"
    )


@login_required
@require_GET
def requests_page(request: HttpRequest) -> HttpResponse:
    """The gateway's log filtered and paged; the first page is live: re-rendered with its filters as requests arrive."""
    choices = log.filter_choices()
    filters = log.request_filters_parse(params=request.GET, choices=choices)
    context: dict[str, Any] = {
        "range": filters.time_range,
        "ranges": list(pages.RANGES),
        "filters": filters,
        "choices": choices,
        "tiers": log.TIERS,
        "statuses": log.STATUSES,
        "page_sizes": (25, log.PAGE_SIZE, 100, log.PAGE_SIZE_MAX),
        **refresh_context(request),
    }
    if filters.errors:
        context.update(requests=[], any_requests=True, next_cursor=None, latency=None)
        return render(request, "dashboard/requests.html", context, status=400)
    page = log.requests_page_rows(filters=filters)
    context.update(
        requests=page.rows,
        next_cursor=page.next_cursor,
        latency=figures.request_latency(requests=page.rows, span=filters.time_range.span) if page.rows else None,
        any_requests=bool(page.rows) or pages.requests_any(),
        # Only the newest page moves: new matching rows come in on top when it is rendered anew.
        live_groups=[FLEET_GROUP] if filters.before is None else [],
    )
    return render(request, "dashboard/requests.html", context)


@login_required
@require_GET
def request_detail(request: HttpRequest, request_id: int) -> HttpResponse:
    item = log.request_detail(request_id=request_id)
    if item is None:
        raise Http404("no such request")
    return render(request, "dashboard/request.html", {"item": item})


@login_required
@require_GET
def requests_csv(request: HttpRequest) -> HttpResponseBase:
    """The matching requests of the range as CSV, streamed; refused above ``EXPORT_ROWS_MAX`` rows."""
    filters = log.request_filters_parse(params=request.GET, choices=log.filter_choices())
    if filters.errors:
        return _refused(filters.errors)
    count = log.requests_export_count(filters=filters)
    if count > log.EXPORT_ROWS_MAX:
        return _refused(
            [f"{count} requests match, more than the {log.EXPORT_ROWS_MAX} one export holds: choose a shorter range."]
        )
    span = filters.time_range
    return _csv_response(
        request,
        _csv_lines(log.REQUEST_CSV_HEADER, log.requests_export_rows(filters=filters)),
        filename=f"requests-{span.start:%Y%m%dT%H%M}-{span.end:%Y%m%dT%H%M}.csv",
    )


@login_required
@require_GET
def spend_csv(request: HttpRequest) -> HttpResponseBase:
    """Spend by billing day and pool or team over the range, as the costs page defines it."""
    errors = log.range_errors(request.GET)
    group = request.GET.get("group", "pool")
    if group not in log.SPEND_GROUPS:
        errors.append(f"Group '{group}' is neither pool, team nor key.")
    time_range = pages.time_range_parse(params=request.GET)
    if (time_range.end - time_range.start).days > log.SPEND_EXPORT_DAYS_MAX:
        errors.append(f"One export covers at most {log.SPEND_EXPORT_DAYS_MAX} days: choose a shorter range.")
    if errors:
        return _refused(errors)
    currency, rows = log.spend_export_rows(time_range=time_range, group=group)
    return _csv_response(
        request,
        _csv_lines(("day", group, "spend", "currency"), ((r.day, r.group, r.spend, currency) for r in rows)),
        filename=f"spend-by-{group}-{time_range.start:%Y%m%d}-{time_range.end:%Y%m%d}.csv",
    )


@login_required
@require_GET
def alerts(request: HttpRequest) -> HttpResponse:
    """Every alert that fired, newest first: when it fired and resolved, its last value and its rule's threshold."""
    return render(request, "dashboard/alerts.html", {"alerts": log.alerts_history(), "shown": log.ALERTS_SHOWN})
