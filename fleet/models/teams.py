"""Teams that send requests through the gateway, and their API keys."""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from fleet.tokens import token_generate, token_hash, token_prefix


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A gateway key; only its SHA-256 digest is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    # What the key may reach and how fast; empty or blank: no limit (fleet/gateway/limits.py).
    allowed_models = models.CharField(
        max_length=1000, blank=True, help_text="Served model names, comma-separated; empty: every model."
    )
    allowed_pools = models.ManyToManyField(
        "fleet.Pool", blank=True, related_name="+", help_text="Pools requests may go to; none selected: every pool."
    )
    requests_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Requests admitted per minute; empty: no limit."
    )
    tokens_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="Prompt plus max_tokens admitted per minute; empty: no limit."
    )

    class Meta:
        ordering = ["team__name", "name"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.team}: {self.name} ({self.prefix}…)"

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def issue(self) -> str:
        """Set a new secret and return it; it is shown once and never stored."""
        key = token_generate(kind="gfk")
        self.key_hash = token_hash(key)
        self.prefix = token_prefix(key)
        return key

    def revoke(self) -> None:
        self.revoked_at = timezone.now()
