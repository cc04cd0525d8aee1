"""Money: what a GPU-hour costs from which date, budgets, and the alerts that watch spend and service."""

from __future__ import annotations

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator, validate_email
from django.db import models


class PriceRate(models.Model):
    gpu_model = models.CharField("GPU model", max_length=100, help_text="GPU model as NVML names it, e.g. NVIDIA L4.")
    node = models.ForeignKey(
        "fleet.Node",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="price_rates",
        help_text="Only for this node (reserved or on-premises host); empty for every node.",
    )
    price_per_gpu_hour = models.DecimalField(
        "price per GPU-hour", max_digits=12, decimal_places=4, validators=[MinValueValidator(Decimal("0"))]
    )
    currency = models.CharField(
        max_length=3, default="USD", validators=[RegexValidator(r"^[A-Z]{3}$", "Use an ISO 4217 code such as USD.")]
    )
    effective_from = models.DateField()
    source = models.CharField(max_length=255, blank=True, help_text="Where the price comes from.")
    source_date = models.DateField(null=True, blank=True, help_text="When the source was read.")

    class Meta:
        ordering = ["gpu_model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["gpu_model", "node", "currency", "effective_from"], name="price_rate_node_unique"
            ),
            models.UniqueConstraint(
                fields=["gpu_model", "currency", "effective_from"],
                condition=models.Q(node__isnull=True),
                name="price_rate_fleet_unique",
            ),
        ]
        indexes = [models.Index(fields=["gpu_model", "effective_from"], name="price_model_from")]

    def __str__(self) -> str:
        return f"{self.gpu_model}: {self.price_per_gpu_hour} {self.currency}/GPU-h from {self.effective_from}"


class Budget(models.Model):
    """A spending limit for one team or one pool over a calendar period of the billing time zone.

    Crossing the soft threshold raises an alert; crossing the hard one also blocks the team's
    requests at the gateway until the period resets or an admin lifts the block. The state
    (``spent``, ``blocked_period_start``) is written by the budget evaluation task, so the
    gateway's check is one indexed read, never a spend computation.
    """

    class Period(models.TextChoices):
        DAY = "day", "day"
        WEEK = "week", "week (from Monday)"
        MONTH = "month", "month"

    name = models.CharField(max_length=100)
    team = models.ForeignKey("fleet.Team", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    pool = models.ForeignKey("fleet.Pool", on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.MONTH)
    amount = models.DecimalField(
        max_digits=14,
        decimal_places=2,
        validators=[MinValueValidator(Decimal("0.01"))],
        help_text="In the billing currency (FLEET_BILLING_CURRENCY), like every spend figure.",
    )
    soft_threshold_pct = models.PositiveSmallIntegerField(
        default=80, help_text="Per cent of the amount at which a warning alert fires."
    )
    hard_threshold_pct = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        default=100,
        help_text="Per cent at which the team's requests are refused; empty for no hard stop. Team budgets only.",
    )
    enabled = models.BooleanField(default=True)
    spent = models.DecimalField(max_digits=18, decimal_places=6, default=Decimal("0"), editable=False)
    spent_period_start = models.DateTimeField(null=True, blank=True, editable=False)
    evaluated_at = models.DateTimeField(null=True, blank=True, editable=False)
    blocked_period_start = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Start of the period in which the hard threshold was reached."
    )
    lifted_period_start = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Start of the period an admin lifted the block for."
    )

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["team", "enabled"], name="budget_team_enabled")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(team__isnull=True, pool__isnull=False)
                | models.Q(team__isnull=False, pool__isnull=True),
                name="budget_team_xor_pool",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.amount} per {self.period})"

    @property
    def subject(self) -> str:
        return f"team {self.team}" if self.team_id else f"pool {self.pool}"

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if bool(self.team_id) == bool(self.pool_id):
            errors["team"] = "A budget covers exactly one team or one pool: choose one of them."
        if self.hard_threshold_pct is not None:
            if self.pool_id and not self.team_id:
                errors["hard_threshold_pct"] = (
                    "Only team budgets can block requests; leave the hard threshold empty for a pool budget."
                )
            elif self.soft_threshold_pct is not None and self.hard_threshold_pct < self.soft_threshold_pct:
                errors["hard_threshold_pct"] = (
                    f"The hard threshold ({self.hard_threshold_pct}%) must not be below the soft one "
                    f"({self.soft_threshold_pct}%)."
                )
        if self.soft_threshold_pct is not None and not 1 <= self.soft_threshold_pct <= 1000:
            errors["soft_threshold_pct"] = "Give a per cent between 1 and 1000."
        if errors:
            raise ValidationError(errors)


class AlertRule(models.Model):
    """What to watch, when it counts as a problem, and where to say so."""

    class Kind(models.TextChoices):
        BUDGET = "budget", "budget threshold"
        SLA_BREACH = "sla_breach", "SLA breach"
        IDLE_WASTE = "idle_waste", "idle waste"
        UNKNOWN_CONTAINER = "unknown_container", "unknown container"
        NODE_SILENT = "node_silent", "node stopped reporting"

    # What ``threshold`` means for each kind; shown in the admin and enforced in clean().
    THRESHOLD_MEANING: dict[str, str] = {
        Kind.BUDGET: "not used: each budget's own soft and hard thresholds apply",
        Kind.SLA_BREACH: "not used: each pool's own SLA latency applies",
        Kind.IDLE_WASTE: "idle and unallocated spend per hour, in the billing currency",
        Kind.UNKNOWN_CONTAINER: "not used",
        Kind.NODE_SILENT: "seconds since the node's last report",
    }

    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    pool = models.ForeignKey(
        "fleet.Pool",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="alert_rules",
        help_text="Only this pool (SLA breach, idle waste, budget); empty for the whole fleet.",
    )
    threshold = models.DecimalField(max_digits=14, decimal_places=4, null=True, blank=True)
    window_s = models.PositiveIntegerField(
        default=900, help_text="How far back the condition looks (SLA latency, idle spend), in seconds."
    )
    for_s = models.PositiveIntegerField(
        default=0, help_text="How long the condition must hold before the alert fires, in seconds."
    )
    email_to = models.TextField(blank=True, help_text="Comma-separated addresses.")
    webhook_url = models.URLField(blank=True, help_text="Receives a JSON POST on firing and on resolving.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["kind", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def recipients(self) -> list[str]:
        return [address.strip() for address in self.email_to.split(",") if address.strip()]

    def clean(self) -> None:
        errors: dict[str, str] = {}
        needs_threshold = self.kind in (self.Kind.IDLE_WASTE, self.Kind.NODE_SILENT)
        if needs_threshold and (self.threshold is None or self.threshold <= 0):
            errors["threshold"] = f"A {self.get_kind_display()} rule needs a positive threshold: " + str(
                self.THRESHOLD_MEANING[self.kind]
            )
        elif not needs_threshold and self.kind and self.threshold is not None:
            errors["threshold"] = f"A {self.get_kind_display()} rule takes no threshold: leave it empty."
        if self.pool_id and self.kind in (self.Kind.UNKNOWN_CONTAINER, self.Kind.NODE_SILENT):
            errors["pool"] = f"A {self.get_kind_display()} rule watches nodes, not pools: leave the pool empty."
        if not self.webhook_url and not self.recipients:
            errors["email_to"] = "Give at least one e-mail address or a webhook URL, or nobody hears of the alert."
        for address in self.recipients:
            try:
                validate_email(address)
            except ValidationError:
                errors["email_to"] = f"{address!r} is not an e-mail address."
        if errors:
            raise ValidationError(errors)


class Alert(models.Model):
    """One episode of a rule's condition holding for one subject, from first seen to resolved."""

    class State(models.TextChoices):
        PENDING = "pending", "pending (waiting out the rule's duration)"
        FIRING = "firing", "firing"
        RESOLVED = "resolved", "resolved"

    rule = models.ForeignKey(AlertRule, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=200, help_text="What the alert is about, e.g. node:gpu-host-1.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    message = models.TextField()
    value = models.CharField(max_length=100, blank=True, help_text="The measured figure when last evaluated.")
    started_at = models.DateTimeField()
    fired_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["rule", "key", "state"], name="alert_rule_key_state")]
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key"],
                condition=~models.Q(state="resolved"),
                name="alert_one_open_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.rule}: {self.key} ({self.state})"


class AlertDelivery(models.Model):
    """One notice of an alert's change (firing or resolved) on one channel, with its attempts."""

    class Channel(models.TextChoices):
        EMAIL = "email", "e-mail"
        WEBHOOK = "webhook", "webhook"

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        SENT = "sent", "sent"
        FAILED = "failed", "failed (retries exhausted)"

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=16, help_text="firing or resolved")
    channel = models.CharField(max_length=16, choices=Channel.choices)
    target = models.CharField(max_length=1000)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "alert deliveries"

    def __str__(self) -> str:
        return f"{self.alert} {self.event} by {self.channel}"
