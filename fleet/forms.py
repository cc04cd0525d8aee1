"""Admin forms that let people type what they mean: per cent for shares, a field per policy setting."""

from __future__ import annotations

from typing import Any, ClassVar

from django import forms
from django.core.exceptions import ValidationError
from django.db import models
from django.forms.fields import InvalidJSONInput

from agents.protocol import nested_deeper_than
from fleet.models import Instance, Policy, Pool
from fleet.models.policies import static_minimum_problems
from fleet.policies.settings import SCHEMAS, Setting, number_text

# Deeper than any label set, argument list or environment nests.
MAX_JSON_DEPTH = 32


class BoundedJSONField(forms.JSONField):
    """JSON typed in the admin, refused with a message when it nests deeper than ``MAX_JSON_DEPTH``.

    Django's own field lets the parser's RecursionError through: a server error, not a form error.
    """

    def to_python(self, value: Any) -> Any:
        message = f"This JSON is nested more than {MAX_JSON_DEPTH} deep."
        try:
            converted = super().to_python(value)
        except RecursionError as exc:
            raise ValidationError(message, code="invalid") from exc
        if nested_deeper_than(converted, MAX_JSON_DEPTH):
            raise ValidationError(message, code="invalid")
        return converted

    def bound_data(self, data: Any, initial: Any) -> Any:
        try:
            return super().bound_data(data, initial)
        except RecursionError:
            return InvalidJSONInput(data)


# For every admin with a JSON field: ``formfield_overrides = JSON_FORM_FIELDS``.
JSON_FORM_FIELDS: dict[type[models.Field[Any, Any]], dict[str, Any]] = {
    models.JSONField: {"form_class": BoundedJSONField}
}


class PercentField(forms.FloatField):
    """A share stored as a fraction from 0 to 1, typed and shown in per cent."""

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("label"):
            kwargs["label"] = f"{kwargs['label']} (%)"
        super().__init__(min_value=0, max_value=100, **kwargs)

    def prepare_value(self, value: Any) -> Any:
        """A stored fraction becomes its per cent; what the user typed is shown as typed."""
        if isinstance(value, float | int) and not isinstance(value, bool):
            return f"{value * 100:.10g}"
        return value

    def clean(self, value: Any) -> float | None:
        percent = super().clean(value)
        return None if percent is None else percent / 100

    def has_changed(self, initial: Any, data: Any) -> bool:
        return super().has_changed(self.to_python(self.prepare_value(initial)), data)


class PolicyKindForm(forms.Form):
    """The first step of adding a policy: its kind decides which settings the second step asks for."""

    kind = forms.ChoiceField(choices=Policy.Kind.choices, widget=forms.RadioSelect)


def setting_field(setting: Setting) -> forms.Field:
    """A typed field that only reads the number or switch; ``policy_settings_clean`` checks its bounds."""
    options: dict[str, Any] = {"label": setting.title, "initial": setting.default}
    if isinstance(setting.default, bool):
        default = "on" if setting.default else "off"
        return forms.BooleanField(required=False, help_text=f"{setting.help} Default {default}.", **options)
    low, high, default = setting.minimum, setting.maximum, number_text(setting.default)
    limits = (
        f"From {number_text(low)} to {number_text(high)}; default {default}."
        if low is not None and high is not None
        else f"Default {default}."
    )
    options["help_text"] = f"{setting.help} {limits}".lstrip()
    attrs = {name: limit for name, limit in (("min", low), ("max", high)) if limit is not None}
    if isinstance(setting.default, int):
        return forms.IntegerField(widget=forms.NumberInput(attrs=attrs), **options)
    return forms.FloatField(widget=forms.NumberInput(attrs={**attrs, "step": "any"}), **options)


class PolicyForm(forms.ModelForm):
    """A policy of one kind, its settings as typed fields; subclasses come from ``policy_form``.

    The kind is fixed: the fields are those of the kind, so a posted kind is ignored. The
    settings are written whole from the fields (keys the kind no longer takes are dropped),
    and ``Policy.clean`` validates them with errors keyed by setting, that is by field.
    """

    policy_kind: ClassVar[str]

    class Meta:
        model = Policy
        fields = ("kind", "pool", "enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["kind"].disabled = True
        self.initial["kind"] = self.instance.kind = self.policy_kind
        stored = self.instance.settings if isinstance(self.instance.settings, dict) else {}
        for key in SCHEMAS[self.policy_kind]:
            if key in stored:
                self.initial.setdefault(key, stored[key])

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        self.instance.settings = {key: cleaned[key] for key in SCHEMAS[self.policy_kind] if key in cleaned}
        return cleaned

    def _post_clean(self) -> None:
        """Once the policy validates on its own, the pools it would govern: a minimum above the static
        size is refused under the static size (a static-hold policy) or above the fields (autoscale)."""
        super()._post_clean()  # type: ignore[misc]  # Django's hook once the instance is built; not in the stubs
        if self.errors or self.policy_kind not in (Policy.Kind.AUTOSCALE, Policy.Kind.STATIC_HOLD):
            return
        pools = Pool.objects.filter(min_instances__gt=0).order_by("name")
        if self.instance.pool_id is not None:
            pools = pools.filter(pk=self.instance.pool_id)
        if problems := static_minimum_problems(pools, saving=[self.instance]):
            self.add_error("static_replicas" if self.policy_kind == Policy.Kind.STATIC_HOLD else None, problems)


class PoolForm(forms.ModelForm):
    """The pool admin's form (the admin gives it the model and fields): a pool is refused where its
    minimum would be above its static size (``static_minimum_problems``)."""

    instance: Pool

    def _post_clean(self) -> None:
        super()._post_clean()  # type: ignore[misc]  # Django's hook once the instance is built; not in the stubs
        if "min_instances" not in self.errors and (problems := static_minimum_problems([self.instance])):
            self.add_error("min_instances", problems)


def policy_form(kind: str) -> type[PolicyForm]:
    fields = {key: setting_field(setting) for key, setting in SCHEMAS[kind].items()}
    return type(f"{kind.title().replace('_', '')}PolicyForm", (PolicyForm,), {**fields, "policy_kind": kind})


class InstanceForm(forms.ModelForm):
    """An instance with the generation the person saw: a change of desired state claims it, as a policy's does."""

    seen_generation = forms.IntegerField(widget=forms.HiddenInput, required=False)

    class Meta:
        model = Instance
        fields = ("pool", "gpu", "mig_device", "desired_state", "actual_generation", "last_error", "expires_at")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["seen_generation"].initial = self.instance.generation
