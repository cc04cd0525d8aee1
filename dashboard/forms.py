from __future__ import annotations

from django import forms


class JoinTokenForm(forms.Form):
    name = forms.CharField(max_length=100, initial="new hosts", help_text="What the token is for.")
    max_uses = forms.IntegerField(min_value=1, max_value=10_000, initial=1, help_text="Hosts it may register.")
    valid_hours = forms.IntegerField(min_value=1, max_value=24 * 30, initial=24, help_text="Expires after.")
