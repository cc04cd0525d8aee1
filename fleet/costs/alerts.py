"""Alert rules turned into alerts with state and history, and their delivery.

Each rule kind is a function from the fleet's state to *conditions* (a key naming the
subject, a message, the measured value). Evaluation compares them with the open alerts: a
new condition opens a pending alert, which fires once it has held for the rule's ``for_s``;
an open alert whose condition is gone resolves. Each change is claimed with a conditional
UPDATE, so two evaluators never announce the same change twice. Firing and resolving are
delivered by e-mail and webhook through a Celery task that retries with backoff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, localcontext
from typing import Any

import httpx
from celery import shared_task
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.histograms import attainment, pool_latency
from fleet.costs.budgets import budget_threshold
from fleet.costs.money import CONTEXT, money_cents
from fleet.costs.selectors import billing_currency, period_bounds, spend_report
from fleet.models import Alert, AlertDelivery, AlertRule, Budget, InstanceSample, Node, Pool
from fleet.selectors import request_log_attainment

WEBHOOK_TIMEOUT_S = 10.0
ALERT_RETRY_BASE_S = 15


def rule_kind_shown(rule: AlertRule) -> str:
    """The rule's kind for beside its name, or "" where the name already says it: a rule named
    "SLA breach" would otherwise read "SLA breach (SLA breach)"."""
    kind = rule.get_kind_display()
    return "" if kind.lower() in rule.name.lower() else kind


def threshold_shown(rule: AlertRule) -> str:
    """The rule's threshold with its unit, one rendering for the alerts page and the notices:
    idle spend as money per hour (cents, the billing currency), a silence in seconds. "" where
    the rule has none or its kind uses none (``AlertRule.THRESHOLD_MEANING`` says why)."""
    if rule.threshold is None:
        return ""
    if rule.kind == AlertRule.Kind.IDLE_WASTE:
        return f"{money_cents(rule.threshold)} {billing_currency()}/h"
    if rule.kind == AlertRule.Kind.NODE_SILENT:
        return f"{rule.threshold.normalize():f} s"
    return ""


@dataclass(frozen=True)
class Condition:
    key: str
    message: str
    value: str


def _budget_conditions(*, rule: AlertRule, now: datetime) -> list[Condition]:
    budgets = Budget.objects.filter(enabled=True, spent_period_start__isnull=False).select_related("team", "pool")
    if rule.pool_id:
        budgets = budgets.filter(pool_id=rule.pool_id)
    conditions = []
    for budget in budgets:
        if budget.spent_period_start != period_bounds(period=budget.period, now=now)[0]:
            continue
        spent = f"{money_cents(budget.spent)} {billing_currency()}"
        for level, pct in (("soft", budget.soft_threshold_pct), ("hard", budget.hard_threshold_pct)):
            if pct is not None and budget.spent >= budget_threshold(budget=budget, pct=pct):
                conditions.append(
                    Condition(
                        key=f"budget:{budget.pk}:{level}",
                        message=f"Budget '{budget.name}' of {budget.subject}: {spent} spent this "
                        f"{budget.period}, at or above its {level} threshold of {pct}% of {budget.amount}"
                        + (" — the team's requests are refused" if level == "hard" and budget.team_id else ""),
                        value=spent,
                    )
                )
    return conditions


def _pools(rule: AlertRule) -> list[Pool]:
    pools = Pool.objects.filter(enabled=True)
    return list(pools.filter(pk=rule.pool_id) if rule.pool_id else pools)


def _sla_conditions(*, rule: AlertRule, now: datetime) -> list[Condition]:
    """Each pool whose requests over the window fall short of its SLA, read as the dashboard reads it.

    The histograms of the pool's SLA metric its instances reported over the window are merged
    and the share within its latency limit (``attainment``) compared with the share its
    percentile asks for: "P95 TTFT <= 500 ms" is breached when fewer than 95 % of the pool's
    requests got their first token within 500 ms, whichever instance served them. A pool whose
    bound grows with the prompt is judged request by request from the gateway's request log
    (``request_log_attainment``), as the dashboard judges it.
    """
    conditions = []
    since = now - timedelta(seconds=rule.window_s)
    pools = _pools(rule)
    logged = request_log_attainment(pools, since, now)
    for pool in pools:
        if pool.pk in logged:
            conditions.extend(_logged_sla_condition(rule=rule, pool=pool, share=logged[pool.pk][1]))
            continue
        field = "ttft_histogram" if pool.sla_metric == Pool.SlaMetric.TTFT else "e2e_histogram"
        histograms = list(
            InstanceSample.objects.filter(instance__pool=pool, at__gte=since, at__lte=now).values_list(field, flat=True)
        )
        limit_s, target = pool.sla_latency_ms / 1000, pool.sla_percentile / 100
        share = attainment(histograms, limit_s)
        if share is None or share >= target:
            continue
        latency = pool_latency(histograms, pool.sla_percentile)
        measured = (
            "" if latency is None else f"; P{pool.sla_percentile} {pool.get_sla_metric_display()} {latency:.3f} s"
        )
        conditions.append(
            Condition(
                key=f"pool:{pool.name}",
                message=f"Pool {pool.name}: {share:.1%} of requests over the last {rule.window_s} s within "
                f"{limit_s:.3f} s, under the {target:.0%} its SLA asks ({pool.sla_label}){measured}",
                value=f"{share:.1%}",
            )
        )
    return conditions


def _logged_sla_condition(*, rule: AlertRule, pool: Pool, share: float | None) -> list[Condition]:
    target = pool.sla_percentile / 100
    if share is None or share >= target:
        return []
    return [
        Condition(
            key=f"pool:{pool.name}",
            message=f"Pool {pool.name}: {share:.1%} of requests over the last {rule.window_s} s within their "
            f"own first-token bound, under the {target:.0%} its SLA asks ({pool.sla_label})",
            value=f"{share:.1%}",
        )
    ]


def _idle_conditions(*, rule: AlertRule, now: datetime) -> list[Condition]:
    """Idle spend per hour over the window: the pool's idle allocated spend, or for the fleet
    its idle allocated plus unallocated spend."""
    start = now - timedelta(seconds=rule.window_s)
    report = spend_report(start=start, end=now)
    if rule.pool_id:
        totals = report.by(lambda line: line.pool_id).get(rule.pool_id)
        idle = totals.idle if totals else Decimal(0)
        subject, key = f"pool {rule.pool}", f"pool:{rule.pool}"
    else:
        with localcontext(CONTEXT):
            idle = report.allocated.idle + report.unallocated.spend
        subject, key = "the fleet", "fleet"
    with localcontext(CONTEXT):
        per_hour = idle * Decimal(3600) / Decimal(rule.window_s)
    if rule.threshold is None or per_hour <= rule.threshold:
        return []
    currency = billing_currency()
    return [
        Condition(
            key=key,
            message=f"Idle spend of {subject} is {money_cents(per_hour)} {currency}/h over the last "
            f"{rule.window_s} s, above the {threshold_shown(rule)} threshold",
            value=f"{money_cents(per_hour)} {currency}/h",
        )
    ]


def _container_conditions(*, rule: AlertRule, now: datetime) -> list[Condition]:
    conditions = []
    for node in Node.objects.exclude(containers=[]).filter(decommissioned_at__isnull=True):
        for container in node.containers:
            gpus = ", ".join(container.get("gpu_uuids") or []) or "no GPU"
            conditions.append(
                Condition(
                    key=f"container:{node.name}:{container.get('container_id', '')}",
                    message=f"Node {node.name} runs a container the panel did not start: "
                    f"{container.get('name') or container.get('container_id')} ({container.get('image') or 'image ?'}) "
                    f"on {gpus}",
                    value=str(container.get("image", "")),
                )
            )
    return conditions


def _silent_conditions(*, rule: AlertRule, now: datetime) -> list[Condition]:
    limit = timedelta(seconds=float(rule.threshold or 0))
    conditions = []
    silent = Node.objects.filter(last_seen_at__lt=now - limit, decommissioned_at__isnull=True)
    for node in silent.exclude(status=Node.Status.PENDING):
        silent_s = int((now - node.last_seen_at).total_seconds())  # type: ignore[operator]
        conditions.append(
            Condition(
                key=f"node:{node.name}",
                message=f"Node {node.name} has not reported for {silent_s} s (limit {limit.total_seconds():g} s)",
                value=f"{silent_s} s",
            )
        )
    return conditions


CONDITIONS: dict[str, Callable[..., list[Condition]]] = {
    AlertRule.Kind.BUDGET: _budget_conditions,
    AlertRule.Kind.SLA_BREACH: _sla_conditions,
    AlertRule.Kind.IDLE_WASTE: _idle_conditions,
    AlertRule.Kind.UNKNOWN_CONTAINER: _container_conditions,
    AlertRule.Kind.NODE_SILENT: _silent_conditions,
}


def alerts_evaluate(*, now: datetime | None = None) -> dict[str, int]:
    """Open, fire and resolve alerts for every enabled rule; count the changes."""
    now = now or timezone.now()
    counts = {"opened": 0, "fired": 0, "resolved": 0}
    for rule in AlertRule.objects.filter(enabled=True).select_related("pool"):
        active = {condition.key: condition for condition in CONDITIONS[rule.kind](rule=rule, now=now)}
        open_alerts = {alert.key: alert for alert in rule.alerts.exclude(state=Alert.State.RESOLVED)}
        for key, condition in active.items():
            alert = open_alerts.get(key)
            if alert is None:
                try:
                    with transaction.atomic():
                        alert = Alert.objects.create(
                            rule=rule, key=key, message=condition.message, value=condition.value, started_at=now
                        )
                except IntegrityError:
                    continue
                counts["opened"] += 1
            else:
                Alert.objects.filter(pk=alert.pk).update(message=condition.message, value=condition.value)
            due = alert.state == Alert.State.PENDING and now - alert.started_at >= timedelta(seconds=rule.for_s)
            if due and alert_claim(alert=alert, state=Alert.State.FIRING, now=now):
                counts["fired"] += 1
                alert_notify(alert=alert, event="firing")
        for key, alert in open_alerts.items():
            if key in active:
                continue
            was_firing = alert.state == Alert.State.FIRING
            if alert_claim(alert=alert, state=Alert.State.RESOLVED, now=now) and was_firing:
                counts["resolved"] += 1
                alert_notify(alert=alert, event="resolved")
    return counts


def alert_claim(*, alert: Alert, state: str, now: datetime) -> bool:
    """Move an alert on from the state this evaluator read; False if another got there first."""
    stamp = {"fired_at": now} if state == Alert.State.FIRING else {"resolved_at": now}
    claimed = Alert.objects.filter(pk=alert.pk, state=alert.state).update(state=state, **stamp) == 1
    if claimed:
        alert.refresh_from_db()
    return claimed


def alert_notify(*, alert: Alert, event: str) -> list[AlertDelivery]:
    """Queue one delivery per channel of the alert's rule, sent after the transaction commits."""
    rule = alert.rule
    deliveries = [
        AlertDelivery.objects.create(alert=alert, event=event, channel=AlertDelivery.Channel.EMAIL, target=address)
        for address in rule.recipients
    ]
    if rule.webhook_url:
        deliveries.append(
            AlertDelivery.objects.create(
                alert=alert, event=event, channel=AlertDelivery.Channel.WEBHOOK, target=rule.webhook_url
            )
        )
    for delivery in deliveries:
        transaction.on_commit(functools.partial(alert_deliver.delay, delivery.pk))
    return deliveries


def alert_payload(*, alert: Alert, event: str) -> dict[str, Any]:
    """The JSON a webhook receives; stable keys, times in ISO 8601 UTC."""

    def iso(moment: datetime | None) -> str | None:
        return moment.isoformat() if moment else None

    return {
        "source": "gpufleet",
        "event": event,
        "alert": alert.pk,
        "rule": alert.rule.name,
        "kind": alert.rule.kind,
        "key": alert.key,
        "message": alert.message,
        "value": alert.value,
        "started_at": iso(alert.started_at),
        "fired_at": iso(alert.fired_at),
        "resolved_at": iso(alert.resolved_at),
    }


def alert_delivery_send(*, delivery: AlertDelivery) -> None:
    """Send once; raise on any failure so the task retries. Records the attempt either way."""
    alert = Alert.objects.select_related("rule").get(pk=delivery.alert_id)
    AlertDelivery.objects.filter(pk=delivery.pk).update(attempts=delivery.attempts + 1)
    delivery.attempts += 1
    try:
        if delivery.channel == AlertDelivery.Channel.WEBHOOK:
            response = httpx.post(
                delivery.target, json=alert_payload(alert=alert, event=delivery.event), timeout=WEBHOOK_TIMEOUT_S
            )
            response.raise_for_status()
        else:
            kind = rule_kind_shown(alert.rule)
            send_mail(
                subject=f"[gpufleet] {delivery.event.upper()}: {alert.rule.name}: {alert.key}",
                message=f"{alert.message}\n\nRule: {alert.rule.name}{f' ({kind})' if kind else ''}\n"
                f"Started: {alert.started_at.isoformat()}\nState: {delivery.event}\n",
                from_email=settings.DEFAULT_FROM_EMAIL,
                recipient_list=[delivery.target],
            )
    except Exception as exc:
        AlertDelivery.objects.filter(pk=delivery.pk).update(last_error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    AlertDelivery.objects.filter(pk=delivery.pk).update(
        status=AlertDelivery.Status.SENT, sent_at=timezone.now(), last_error=""
    )


def alert_delivery_give_up(*, delivery_id: int) -> None:
    AlertDelivery.objects.filter(pk=delivery_id).update(status=AlertDelivery.Status.FAILED)


@shared_task(bind=True, name="fleet.alert_deliver", max_retries=5)
def alert_deliver(self: Any, delivery_id: int) -> object:
    """Deliver one alert notice; on failure retry after 15 s, 30 s, 60 s... then give up.

    Any exception counts as a failed attempt (a receiver answering 500, a refused connection,
    an SMTP error): the receiver may be down for a while, and the attempt is recorded on the
    delivery row so the admin shows why. In the embedded mode retries run at once, in-process.
    """
    delivery = AlertDelivery.objects.get(pk=delivery_id)
    if delivery.status != AlertDelivery.Status.PENDING:
        return delivery.status
    try:
        alert_delivery_send(delivery=delivery)
    except Exception as exc:
        if self.request.retries >= self.max_retries:
            alert_delivery_give_up(delivery_id=delivery_id)
            return AlertDelivery.Status.FAILED
        countdown = ALERT_RETRY_BASE_S * 2**self.request.retries
        if self.request.is_eager:
            # Eager Celery propagates a raised Retry to the caller instead of retrying; a returned
            # one it runs again at once, in-process (the embedded mode's retry, without the wait).
            return self.retry(exc=exc, countdown=countdown, throw=False)
        raise self.retry(exc=exc, countdown=countdown) from exc
    return AlertDelivery.Status.SENT
