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
