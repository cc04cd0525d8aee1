from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings


class JoinTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="new hosts", help_text="What the token is for.")
    max_uses = forms.IntegerField(min_value=1, max_value=10_000, initial=1, help_text="Hosts it may register.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """The lifetime offered is the one every join token gets by default; read per form, as settings may change."""
        super().__init__(*args, **kwargs)
        default = settings.JOIN_TOKEN_DEFAULT_TTL_HOURS
        self.fields["valid_hours"] = forms.IntegerField(
            min_value=1,
            max_value=max(24 * 30, default),
            initial=default,
            help_text=f"Hours until it expires (default {default}, set by JOIN_TOKEN_DEFAULT_TTL_HOURS).",
        )
