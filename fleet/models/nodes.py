"""GPU hosts and what the agent on each reports about its GPUs."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from agents import protocol
from fleet import catalog
from fleet.tokens import token_generate, token_hash, token_prefix


class Node(models.Model):
    """A GPU host running one agent."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending (never reported)"
        ONLINE = "online", "online"
        STALE = "stale", "stale (reports late)"
        OFFLINE = "offline", "offline"
        DRAINING = "draining", "draining"
        DECOMMISSIONED = "decommissioned", "decommissioned"

    name = models.SlugField(max_length=100, help_text="Unique among hosts not decommissioned.")
    address = models.CharField(
        max_length=255,
        blank=True,
        help_text="Host name or IP where the fleet reaches this host's servers: as the panel saw the agent at"
        " registration, or as an operator sets it when the host moves (a host cannot move itself).",
    )
    labels = models.JSONField(default=dict, blank=True, help_text='Free-form labels, e.g. {"zone": "a"}.')
    agent_version = models.CharField(max_length=50, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    last_seen_at = models.DateTimeField("last seen", null=True, blank=True)
    simulated = models.BooleanField(default=False, help_text="Part of the simulated demo fleet, not a real host.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=16, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    join_token = models.ForeignKey(
        "fleet.JoinToken", on_delete=models.SET_NULL, null=True, blank=True, related_name="nodes", editable=False
    )
    nvml_available = models.BooleanField(
        "NVML available", null=True, blank=True, help_text="Whether the agent could use NVML."
    )
    nvml_reason = models.CharField(
        "NVML problem", max_length=1000, blank=True, help_text="Why NVML is unusable, as the agent said."
    )
    runtime_reason = models.CharField(
        "container runtime problem",
        max_length=1000,
        blank=True,
        help_text="Why the container runtime is unusable, as the agent said.",
    )
    containers = models.JSONField(
        default=list,
        blank=True,
        help_text="Containers the agent reported but does not run for the panel: orphans and foreign GPU users.",
    )
    last_seq = models.PositiveBigIntegerField(default=0, help_text="Newest report stored; older ones are duplicates.")
    reports_dropped = models.PositiveBigIntegerField(
        default=0, help_text="Reports the agent's buffer lost while the panel was unreachable."
    )
    decommissioned_at = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="When the host left the fleet; its history stays."
    )
    # The agent's --port-range as it registered (or as an operator changed it since): instance
    # endpoints are taken on these ports only.
    port_low = models.PositiveIntegerField(
        "first port",
        default=protocol.DEFAULT_PORT_RANGE[0],
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="First port the agent runs servers on (its --port-range as it registered). Change it here"
        " when the host's agent runs with another range: the agent cannot widen it itself.",
    )
    port_high = models.PositiveIntegerField(
        "last port",
        default=protocol.DEFAULT_PORT_RANGE[1],
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="Last port the agent runs servers on (its --port-range as it registered).",
    )

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["status", "last_seen_at"], name="node_status_seen")]
        # A host that joins again after its decommission is a new row under the same name:
        # the old row keeps the history billed to it.
        constraints = [
            models.UniqueConstraint(
                fields=["name"], condition=models.Q(decommissioned_at__isnull=True), name="node_name_live_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(port_low__gte=1, port_high__lte=65535, port_low__lte=models.F("port_high")),
                name="node_port_range_valid",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        """An address other hosts can reach (an IP or a host name) and a port range that is one."""
        problems: dict[str, str] = {}
        if self.address:
            try:
                self.address = protocol.address_check(self.address)
            except ValueError as exc:
                problems["address"] = str(exc)
        if self.port_low is not None and self.port_high is not None and self.port_low > self.port_high:
            problems["port_high"] = f"the range ends below where it starts ({self.port_low})"
        if problems:
            raise ValidationError(problems)

    def issue_token(self) -> str:
        """Replace the agent token; the plain token is returned once and never stored."""
        token = token_generate(kind="gfn")
        self.token_hash = token_hash(token)
        self.token_prefix = token_prefix(token)
        return token


class Gpu(models.Model):
    class MigMode(models.TextChoices):
        UNSUPPORTED = "unsupported", "not supported"
        DISABLED = "disabled", "disabled"
        ENABLED = "enabled", "enabled"

    node = models.ForeignKey(Node, on_delete=models.PROTECT, related_name="gpus")
    index = models.PositiveSmallIntegerField()
    uuid = models.CharField("UUID", max_length=64)
    model_name = models.CharField("GPU model", max_length=100)
    memory_total_bytes = models.PositiveBigIntegerField("memory (bytes)")
    mig_capable = models.BooleanField("MIG capable", default=False)
    mig_mode = models.CharField("MIG mode", max_length=16, choices=MigMode.choices, default=MigMode.UNSUPPORTED)
    decommissioned_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the card left the fleet (its host decommissioned, or the card swapped out); its history stays.",
    )

    class Meta:
        verbose_name = "GPU"
        verbose_name_plural = "GPUs"
        ordering = ["node__name", "index"]
        # Only cards in the fleet are unique by UUID and position: a card that left keeps its
        # row (and the samples, rollups and spend on it) beside the row it has if it comes back.
        constraints = [
            models.UniqueConstraint(
                fields=["node", "index"],
                condition=models.Q(decommissioned_at__isnull=True),
                name="gpu_node_index_unique",
            ),
            models.UniqueConstraint(
                fields=["uuid"], condition=models.Q(decommissioned_at__isnull=True), name="gpu_uuid_live_unique"
            ),
        ]
        indexes = [models.Index(fields=["model_name"], name="gpu_model_name")]

    def __str__(self) -> str:
        return f"{self.node.name}/gpu{self.index} ({self.model_name})"

    @property
    def mig_enabled(self) -> bool:
        return self.mig_mode == self.MigMode.ENABLED

    def clean(self) -> None:
        if self.mig_mode == self.MigMode.ENABLED and catalog.gpu_supports_mig(self.model_name) is False:
            raise ValidationError(
                {"mig_mode": f"{self.model_name} has no MIG: MIG exists on {', '.join(catalog.MIG_FAMILIES)} only."}
            )


class MigDevice(models.Model):
    """A MIG slice of a GPU, reported by the agent where MIG is enabled."""

    gpu = models.ForeignKey(Gpu, on_delete=models.CASCADE, related_name="mig_devices", verbose_name="GPU")
    uuid = models.CharField("UUID", max_length=64, unique=True)
    profile = models.CharField("MIG profile", max_length=32, help_text="MIG profile, e.g. 1g.10gb.")
    gpu_instance_id = models.PositiveSmallIntegerField("GPU instance ID")
    compute_instance_id = models.PositiveSmallIntegerField("compute instance ID", default=0)
    memory_total_bytes = models.PositiveBigIntegerField("memory (bytes)")

    class Meta:
        verbose_name = "MIG device"
        ordering = ["gpu", "gpu_instance_id", "compute_instance_id"]

    def __str__(self) -> str:
        return f"{self.gpu}:{self.profile}#{self.gpu_instance_id}"

    @property
    def slices(self) -> int:
        """Compute slices out of seven: the device's share of its GPU's price."""
        return catalog.mig_slices(self.profile)

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if self.gpu_id and not self.gpu.mig_enabled:
            errors["gpu"] = f"{self.gpu} has MIG {self.gpu.get_mig_mode_display()}; a MIG device needs MIG enabled."
        try:
            catalog.mig_slices(self.profile)
        except ValueError as exc:
            errors["profile"] = str(exc)
        if errors:
            raise ValidationError(errors)


class JoinToken(models.Model):
    """Lets new hosts register themselves; single- or multi-use, optionally expiring."""

    name = models.CharField(max_length=100, help_text="What the token is for, e.g. 'rack 4 rollout'.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=16, editable=False)
    max_uses = models.PositiveIntegerField(null=True, blank=True, default=1, help_text="Empty: unlimited.")
    uses = models.PositiveIntegerField(default=0, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"

    def issue_token(self) -> str:
        token = token_generate(kind="gfj")
        self.token_hash = token_hash(token)
        self.token_prefix = token_prefix(token)
        return token
