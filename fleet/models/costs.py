"""Prices: what a GPU-hour costs, from which date."""

from __future__ import annotations

from decimal import Decimal

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models


class PriceRate(models.Model):
    gpu_model = models.CharField(max_length=100, help_text="GPU model as NVML names it, e.g. NVIDIA L4.")
    node = models.ForeignKey(
        "fleet.Node",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="price_rates",
        help_text="Only for this node (reserved or on-premises host); empty for every node.",
    )
    price_per_gpu_hour = models.DecimalField(
        max_digits=12, decimal_places=4, validators=[MinValueValidator(Decimal("0"))]
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
