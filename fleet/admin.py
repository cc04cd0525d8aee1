"""The Django admin: where operators edit nodes, pools, profiles, policies and prices."""

from __future__ import annotations

import functools
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.defaultfilters import pluralize
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from agents import protocol
from fleet.costs.budgets import budget_block_lift
from fleet.costs.money import money_cents
from fleet.costs.selectors import billing_currency, period_bounds
from fleet.decide.services import (
    SettingsRefused,
    StaleGeneration,
    instance_add,
    instance_desire,
    join_token_ttl,
    node_decommission,
    node_token_rotate,
)
from fleet.decide.tuning import (
    TUNING_DAYS,
    TUNING_MAX_EVALUATIONS,
    TuningRefused,
    tuning_run_apply,
    tuning_run_create,
    tuning_runs_fail_lost,
)
from fleet.forms import JSON_FORM_FIELDS, InstanceForm, PercentField, PolicyKindForm, PoolForm, policy_form
from fleet.models import (
    Alert,
    AlertDelivery,
    AlertRule,
    ApiKey,
    BatchJob,
    Budget,
    Decision,
    Gpu,
    Instance,
    InstanceEvent,
    JoinToken,
    MigDevice,
    ModelProfile,
    Node,
    OrphanContainer,
    Policy,
    Pool,
    PriceRate,
    RequestLog,
    Team,
    TuningRun,
)
from fleet.policies.settings import SCHEMAS
from fleet.policies.vram import vram_estimate_for
from fleet.sim.headroom import DEFAULT_HEADROOM, MAX_HEADROOM, headroom_traffic
from fleet.tasks import tuning_run_queue
from fleet.telemetry.agent_dist import install_command, install_problems
from fleet.telemetry.ingest import batch_image_bound_watch, spec_change_tell

GIB = 1024**3
SHOWN_ONCE = "fleet_shown_once"


class ShownOnceAdmin(admin.ModelAdmin):
    """Shows the secret a new object was issued in the response to the add form, and nowhere else.

    Not as a message: messages ride to the next page in a cookie (signed, not encrypted),
    or in the session table when they overflow it, so the secret would sit in the browser's
    cookie jar or the database.
    """

    def secret_show(
        self, request: HttpRequest, message: str, *, command: str = "", notes: list[str] | None = None
    ) -> None:
        setattr(request, SHOWN_ONCE, {"message": message, "command": command, "notes": notes or []})

    def response_add(self, request: HttpRequest, obj: Any, post_url_continue: str | None = None) -> HttpResponse:
        shown = getattr(request, SHOWN_ONCE, None)
        if shown is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.model._meta
        context = {
            **self.admin_site.each_context(request),
            "opts": opts,
            "obj": obj,
            "title": f"New {opts.verbose_name}",
            **shown,
        }
        return TemplateResponse(request, "admin/fleet/shown_once.html", context)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records the panel writes itself (decisions, logged requests, tuning runs, state events, alerts): people
    look, filter and export; nobody adds or edits one by hand, superusers included, and nobody deletes one
    unless the admin says ``deletable``. One definition, so a new record's admin cannot forget a door."""

    deletable = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return self.deletable and super().has_delete_permission(request, obj)


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "index",
        "model_name",
        "uuid",
        "memory_total_bytes",
        "mig_capable",
        "mig_mode",
        "decommissioned_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Node)
class NodeAdmin(ShownOnceAdmin):
    formfield_overrides = JSON_FORM_FIELDS
    list_display = ("name", "status", "simulated", "address", "gpu_count", "agent_version", "last_seen_at")
    list_filter = ("status", "simulated")
    search_fields = ("name", "address")
    readonly_fields = (
        "agent_version",
        "status",
        "last_seen_at",
        "nvml_available",
        "nvml_reason",
        "runtime_reason",
        "reports_dropped",
        "containers",
        "token_prefix",
        "created_at",
        "decommissioned_at",
    )
    fields = ("name", "labels", "simulated", "address", "port_low", "port_high", *readonly_fields)
    inlines = [GpuInline]
    actions = ["rotate_token", "decommission"]

    @admin.display(description="GPUs")
    def gpu_count(self, obj: Node) -> int:
        return obj.gpus.count()

    def get_queryset(self, request: HttpRequest) -> QuerySet[Node]:
        return super().get_queryset(request).prefetch_related("gpus")

    def save_model(self, request: HttpRequest, obj: Node, form: Any, change: bool) -> None:
        token = None if change else obj.issue_token()
        super().save_model(request, obj, form, change)
        if token:
            self.secret_show(request, f"Agent token for {obj.name} (shown once, store it now): {token}")

    @admin.action(description="Issue a new agent token (the old one stops working)")
    def rotate_token(self, request: HttpRequest, queryset: QuerySet[Node]) -> TemplateResponse:
        """Show the new tokens in this response only.

        Not as messages: those that do not fit the message cookie are parked in the session
        table, which would put agent tokens in the database in clear.
        """
        rotated = [(node, node_token_rotate(node=node)) for node in queryset.filter(decommissioned_at__isnull=True)]
        context = {**self.admin_site.each_context(request), "rotated": rotated, "opts": self.model._meta}
        return TemplateResponse(request, "admin/fleet/node/rotated_tokens.html", context)

    def has_delete_permission(self, request: HttpRequest, obj: Node | None = None) -> bool:
        """Never: deleting a host would take the spend and telemetry billed to it along. Decommission it."""
        return False

    @admin.action(description="Decommission (its agent token stops working; its spend and telemetry stay)")
    def decommission(self, request: HttpRequest, queryset: QuerySet[Node]) -> None:
        nodes = [
            node_decommission(node=node, reason=f"host {node.name} decommissioned by {request.user} in the admin")
            for node in queryset.filter(decommissioned_at__isnull=True)
        ]
        names = ", ".join(node.name for node in nodes) or "none (all were already)"
        self.message_user(
            request,
            f"Decommissioned {len(nodes)} host{pluralize(len(nodes))}: {names}. Their instances were stopped; "
            "their spend, samples and rollups stay in every past period.",
            messages.SUCCESS,
        )


class MigDeviceInline(admin.TabularInline):
    model = MigDevice
    extra = 0
    fields = ("profile", "uuid", "gpu_instance_id", "compute_instance_id", "memory_total_bytes")


@admin.register(JoinToken)
class JoinTokenAdmin(ShownOnceAdmin):
    list_display = ("name", "token_prefix", "uses", "max_uses", "expires_at", "revoked_at", "created_at")
    readonly_fields = ("token_prefix", "uses", "created_at")
    fields = ("name", "max_uses", "expires_at", "revoked_at", *readonly_fields)

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        """A new token starts with the lifetime every join token gets by default."""
        return {"expires_at": timezone.now() + join_token_ttl(), **super().get_changeform_initial_data(request)}

    def formfield_for_dbfield(self, db_field: models.Field, request: HttpRequest, **kwargs: Any) -> Any:
        field = super().formfield_for_dbfield(db_field, request, **kwargs)
        if db_field.name == "expires_at" and field is not None:
            hours = int(join_token_ttl().total_seconds() // 3600)
            field.help_text = (
                f"New tokens start at {hours} hour{pluralize(hours)} from now (JOIN_TOKEN_DEFAULT_TTL_HOURS);"
                " empty: never expires."
            )
        return field

    def save_model(self, request: HttpRequest, obj: JoinToken, form: Any, change: bool) -> None:
        token = None if change else obj.issue_token()
        super().save_model(request, obj, form, change)
        if token:
            self.secret_show(
                request,
                f"Join token (shown once): {token}",
                command=install_command(request, token),
                notes=install_problems(request),
            )


@admin.register(MigDevice)
class MigDeviceAdmin(admin.ModelAdmin):
    list_display = ("__str__", "gpu", "profile", "uuid", "memory_total_bytes")
    list_filter = ("profile",)
    list_select_related = ("gpu__node",)
    search_fields = ("uuid", "gpu__uuid", "gpu__node__name")


@admin.register(Gpu)
class GpuAdmin(admin.ModelAdmin):
    list_display = ("__str__", "node", "index", "model_name", "memory_gib", "mig_mode")
    list_filter = ("model_name", "mig_mode", "node__simulated")
    search_fields = ("uuid", "node__name", "model_name")
    list_select_related = ("node",)
    readonly_fields = ("node", "index", "uuid", "model_name", "memory_total_bytes", "mig_capable")
    inlines = [MigDeviceInline]

    @admin.display(description="memory (GiB)")
    def memory_gib(self, obj: Gpu) -> str:
        return f"{obj.memory_total_bytes / GIB:.1f}"


@admin.register(ModelProfile)
class ModelProfileAdmin(admin.ModelAdmin):
    formfield_overrides = JSON_FORM_FIELDS
    list_display = (
        "name",
        "use_case",
        "model",
        "quantization",
        "kv_cache_dtype",
        "max_model_len",
        "max_num_seqs",
        "enable_prefix_caching",
        "enable_sleep_mode",
    )
    list_filter = ("use_case", "quantization", "kv_cache_dtype", "enable_prefix_caching")
    search_fields = ("name", "model", "served_name")
    readonly_fields = ("memory_arithmetic",)
    fieldsets = (
        (None, {"fields": ("name", "use_case", "image", "model", "served_name", "tokenizer", "notes")}),
        (
            "vLLM settings",
            {
                "fields": (
                    "context_limit",
                    "max_model_len",
                    "max_num_seqs",
                    "dtype",
                    "quantization",
                    "kv_cache_dtype",
                    "enable_prefix_caching",
                    "enable_sleep_mode",
                    "gpu_memory_utilization",
                )
            },
        ),
        ("Container", {"fields": ("extra_args", "env", "volumes")}),
        ("Memory", {"fields": ("memory_arithmetic",)}),
    )

    def save_model(self, request: HttpRequest, obj: ModelProfile, form: Any, change: bool) -> None:
        """A change of what goes into the instances' spec moves no generation: their agents are
        told here, so a waiting one reports now and gets the new spec in its reply."""
        super().save_model(request, obj, form, change)
        if change and set(form.changed_data) & set(protocol.InstanceSpec.model_fields):
            spec_change_tell(instances=Instance.objects.filter(pool__model_profile=obj), why="profile")

    @admin.display(description="GPU memory arithmetic")
    def memory_arithmetic(self, obj: ModelProfile) -> str:
        """The estimate placement checks, written out so a person can check it by hand."""
        estimate = vram_estimate_for(obj)
        if estimate is None:
            return "No estimate: the catalogue lacks this model's architecture or its quantization's bits."
        return format_html(
            "KV cache per token: 2 × {} layers × {} KV heads × {} head dim × {} B = {} KiB.<br>"
            "One {}-token sequence: {} GiB of KV cache.<br>"
            "Weights: {} parameters × {} bits ≈ {} GiB.<br>"
            "Needs {} GiB: weights, one full-length sequence and overhead {} GiB (CUDA context, "
            "activations, CUDA graphs). Placement refuses a device whose budget (GPU memory "
            "utilization × its memory) is smaller.",
            estimate.layers,
            estimate.kv_heads,
            estimate.head_dim,
            estimate.kv_dtype_bytes,
            f"{estimate.kv_bytes_per_token / 1024:g}",
            f"{estimate.kv_tokens:,}",
            f"{estimate.kv_bytes / GIB:.2f}",
            f"{estimate.parameters:,}",
            f"{estimate.bits_per_weight:g}",
            f"{estimate.weight_bytes / GIB:.2f}",
            f"{estimate.required_bytes / GIB:.2f}",
            f"{estimate.overhead_bytes / GIB:.2f}",
        )


# The action a person's change of desired state is logged as, by the state asked for (the policies' words).
INSTANCE_ACTIONS: dict[str, str] = {
    Instance.Desired.RUNNING: "start",
    Instance.Desired.SLEEPING: "sleep",
    Instance.Desired.STOPPED: "stop",
}


class InstanceInline(admin.TabularInline):
    """A pool's instances, to look at. Deleting one here would take its state history (what its spend is
    computed from) with it unasked: an instance is stopped through its desired state on its own page."""

    model = Instance
    extra = 0
    can_delete = False
    show_change_link = True
    fields = readonly_fields = (
        "gpu",
        "mig_device",
        "desired_state",
        "actual_state",
        "generation",
        "endpoint",
        "last_request_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Instances are added and changed on their own page, where desired state goes through the services."""
        return False


@admin.register(Pool)
class PoolAdmin(admin.ModelAdmin):
    form = PoolForm
    list_display = (
        "name",
        "tier",
        "isolation",
        "model_profile",
        "gpu_model",
        "sla_label",
        "band",
        "min_instances",
        "max_instances",
        "enabled",
    )
    list_filter = ("tier", "isolation", "enabled", "model_profile")
    list_select_related = ("model_profile",)
    search_fields = ("name",)
    inlines = [InstanceInline]
    actions = ["tune_settings"]
    fieldsets = (
        (None, {"fields": ("name", "tier", "isolation", "model_profile", "gpu_model", "mig_profile", "enabled")}),
        (
            "Service level",
            {
                "fields": (
                    "sla_metric",
                    "sla_percentile",
                    "sla_latency_ms",
                    "sla_ms_per_1k_prompt_tokens",
                    "sla_e2e_latency_ms",
                )
            },
        ),
        ("Capacity", {"fields": ("util_band_low", "util_band_high", "min_instances", "max_instances")}),
        ("Idle and pre-warm", {"fields": ("idle_minimize_after_s", "idle_stop_after_s", "prewarm_margin_s")}),
    )

    def save_model(self, request: HttpRequest, obj: Pool, form: Any, change: bool) -> None:
        """Another profile changes the spec of every instance of the pool: their agents are told."""
        super().save_model(request, obj, form, change)
        if change and "model_profile" in form.changed_data:
            spec_change_tell(instances=Instance.objects.filter(pool=obj), why="pool profile")

    def formfield_for_dbfield(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """The band is stored as fractions, the share the policies compare load with; people type per cent."""
        if db_field.name in ("util_band_low", "util_band_high"):
            kwargs["form_class"] = PercentField
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(description="SLA")
    def sla_label(self, obj: Pool) -> str:
        return obj.sla_label

    @admin.display(description="utilization band")
    def band(self, obj: Pool) -> str:
        return f"{obj.util_band_low:.0%}–{obj.util_band_high:.0%}"

    def has_tune_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perms(TUNE_PERMISSIONS)

    @admin.action(description="Tune settings on the last days of this pool's request log", permissions=["tune"])
    def tune_settings(self, request: HttpRequest, queryset: QuerySet[Pool]) -> TemplateResponse | None:
        """Asks how many days and how many simulations, then queues one ``TuningRun`` per pool."""
        form = TuneForm(request.POST if "tune" in request.POST else None)
        if not form.is_valid():
            context = {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "title": "Tune settings on past traffic",
                "form": form,
                "pools": queryset,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
            }
            return TemplateResponse(request, "admin/fleet/pool/tune_settings.html", context)
        user = request.user.get_username()
        with transaction.atomic():  # every run queued, then handed on: none starts while the next is written
            runs = [(pool, tuning_run_create(pool=pool, user=user, **form.cleaned_data)) for pool in queryset]
            for _pool, run in runs:
                transaction.on_commit(functools.partial(tuning_run_queue, run_id=run.pk))
        for pool, run in runs:
            url = reverse("admin:fleet_tuningrun_change", args=[run.pk])
            self.message_user(
                request,
                format_html(
                    'Tuning run <a href="{}">{}</a> queued for {} on its last {} days of requests.',
                    url,
                    run.pk,
                    pool.name,
                    form.cleaned_data["days"],
                ),
                messages.SUCCESS,
            )
        return None


# Applying tuned settings writes the pool's fields and its policy rows, as the admin's pool and policy forms do.
TUNE_PERMISSIONS = ("fleet.change_pool", "fleet.change_policy")


class TuneForm(forms.Form):
    days = forms.IntegerField(min_value=1, max_value=31, initial=TUNING_DAYS, help_text="Of request log, to now.")
    max_evaluations = forms.IntegerField(
        min_value=1,
        max_value=80,
        initial=TUNING_MAX_EVALUATIONS,
        help_text="Simulations at most, each replaying all the traffic; the default is one round of the search.",
    )
    headroom = forms.FloatField(
        min_value=0.0,
        max_value=MAX_HEADROOM,
        initial=DEFAULT_HEADROOM,
        help_text=(
            "Room for growth: the settings chosen also meet the SLA on the same traffic at 1 + this times its rate "
            "(0.25: a quarter more). Each candidate checked there is one more simulation; 0 checks none."
        ),
    )


@admin.register(TuningRun)
class TuningRunAdmin(ReadOnlyAdmin):
    """What each search found, read-only; a done run's settings apply in one click from its page."""

    change_form_template = "admin/fleet/tuningrun/change_form.html"
    list_display = (
        "created_at",
        "pool",
        "state",
        "requested_by",
        "requests",
        "spend",
        "attainment",
        "holds_headroom",
        "applied_at",
    )
    list_filter = ("state", "pool")
    list_select_related = ("pool",)
    readonly_fields = ("spend", "attainment", "at_headroom")
    fields = (
        ("pool", "state", "requested_by", "created_at", "heartbeat_at", "finished_at"),
        "error",
        ("traffic_from", "traffic_to", "requests", "engine", "sla"),
        ("max_evaluations", "evaluations", "meets_sla"),
        "spend",
        "attainment",
        ("headroom", "holds_headroom", "at_headroom"),
        "settings",
        "base_settings",
        ("applied_at", "applied_by", "applied_decision"),
    )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Whoever may start a run (``PoolAdmin.tune_settings``) sees what it found."""
        return super().has_view_permission(request, obj) or request.user.has_perms(TUNE_PERMISSIONS)

    @admin.display(description="paid GPU-hours (started from → found)")
    def spend(self, obj: TuningRun) -> str:
        if obj.base_paid_gpu_hours is None or obj.tuned_paid_gpu_hours is None:
            return "-"
        return f"{obj.base_paid_gpu_hours:.3f} → {obj.tuned_paid_gpu_hours:.3f}"

    @admin.display(description="within the SLA (started from → found)")
    def attainment(self, obj: TuningRun) -> str:
        if obj.base_attainment is None or obj.tuned_attainment is None:
            return "-"
        return f"{obj.base_attainment:.2%} → {obj.tuned_attainment:.2%}"

    @admin.display(description="within the SLA at the headroom (found)")
    def at_headroom(self, obj: TuningRun) -> str:
        if obj.headroom_attainment is None:
            return "-"
        return f"{obj.headroom_attainment:.2%} at {headroom_traffic(obj.headroom)}"

    def get_urls(self) -> list[URLPattern]:
        apply = path("<int:run_id>/apply/", self.admin_site.admin_view(self.apply_view), name="fleet_tuningrun_apply")
        return [apply, *super().get_urls()]

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """A run whose process is gone shows failed, not running forever."""
        tuning_runs_fail_lost()
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        tuning_runs_fail_lost()
        run = self.get_object(request, object_id)
        can_apply = (
            run is not None
            and run.state == TuningRun.State.DONE
            and run.applied_at is None
            and bool(run.settings)
            and request.user.has_perms(TUNE_PERMISSIONS)
        )
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "can_apply": can_apply})

    def apply_view(self, request: HttpRequest, run_id: int) -> HttpResponse:
        """Apply the run's settings through the services, as ``policy_apply`` does; refused, nothing changes."""
        if request.method != "POST" or not request.user.has_perms(TUNE_PERMISSIONS):
            raise PermissionDenied
        run = get_object_or_404(TuningRun, pk=run_id)
        try:
            decision = tuning_run_apply(run=run, user=request.user.get_username())
        except (TuningRefused, SettingsRefused) as exc:
            self.message_user(request, f"Nothing changed: {exc}.", messages.ERROR)
        else:
            done = f"Decision {decision.pk}: tuning run {run.pk}'s settings applied to {run.pool}."
            self.message_user(request, done, messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:fleet_tuningrun_change", args=[run.pk]))


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    form = InstanceForm
    list_display = (
        "__str__",
        "pool",
        "gpu",
        "desired_state",
        "actual_state",
        "generation",
        "last_request_at",
        "expires_at",
    )
    list_filter = ("pool", "desired_state", "actual_state", "pool__tier")
    list_select_related = ("pool", "gpu__node")
    raw_id_fields = ("gpu", "mig_device")
    readonly_fields = (
        "actual_state",
        "generation",
        "endpoint",
        "container_id",
        "created_at",
        "desired_changed_at",
        "actual_changed_at",
        "ready_at",
        "last_request_at",
    )

    def save_model(self, request: HttpRequest, obj: Instance, form: Any, change: bool) -> None:
        """Desired state changes through the service, so each is a decision with its generation, its event and who.

        The change claims the generation the person saw: one a policy or the gateway made
        since the page loaded wins, and the person is told. The other fields save alone
        (``update_fields``), so a save never writes back a desired state or an agent's report.
        """
        who = {"user": request.user.get_username()}
        if not change:
            reason = f"instance added, desired {obj.desired_state}, by {request.user} in the admin"
            instance_add(instance=obj, reason=reason, kind="manual", inputs=who)
            return
        if fields := [name for name in form.changed_data if name not in ("desired_state", "seen_generation")]:
            obj.save(update_fields=fields)
        if "desired_state" not in form.changed_data:
            return
        state, was = obj.desired_state, form.initial["desired_state"]
        obj.generation = form.cleaned_data.get("seen_generation") or obj.generation
        try:
            instance_desire(
                instance=obj,
                state=state,
                action=INSTANCE_ACTIONS[state],
                reason=f"desired state {was} -> {state}, set by {request.user} in the admin",
                kind="manual",
                inputs={**who, "from": was},
            )
        except StaleGeneration as exc:
            obj.refresh_from_db()
            self.message_user(request, f"Desired state not changed: {exc}; look again and retry.", messages.ERROR)


@admin.register(InstanceEvent)
class InstanceEventAdmin(ReadOnlyAdmin):
    """The state history spend is computed from: deleting a row would rewrite what was paid."""

    list_display = ("at", "instance", "state", "generation", "gpu")
    list_filter = ("state",)
    list_select_related = ("instance__pool", "gpu__node")
    date_hierarchy = "at"


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    """Settings are typed fields of the policy's kind; adding one asks for the kind first."""

    list_display = ("kind", "pool", "enabled", "updated_at")
    list_filter = ("kind", "enabled")
    list_select_related = ("pool",)

    def policy_kind(self, request: HttpRequest, obj: Policy | None) -> str:
        """The kind whose fields the form shows: the policy's, or on the add form the one chosen first."""
        return obj.kind if obj is not None else request.GET["kind"]

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        return (
            (None, {"fields": ("kind", "pool", "enabled")}),
            ("Settings", {"fields": tuple(SCHEMAS[self.policy_kind(request, obj)])}),
        )

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any) -> Any:
        kwargs["form"] = policy_form(self.policy_kind(request, obj))
        return super().get_form(request, obj, change, **kwargs)

    def save_model(self, request: HttpRequest, obj: Policy, form: Any, change: bool) -> None:
        """The fleet's co-location policy bounds the image of every batch job a node runs: a
        change of that bound (here or by a delete) tells their agents (``batch_image_bound_watch``)."""
        with batch_image_bound_watch(saving=[obj]):
            super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Policy) -> None:
        with batch_image_bound_watch(deleting=[obj]):
            super().delete_model(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Policy]) -> None:
        with batch_image_bound_watch(deleting=queryset):
            super().delete_queryset(request, queryset)

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        step = PolicyKindForm(request.GET if "kind" in request.GET else None)
        if step.is_valid():
            return super().add_view(request, form_url, extra_context)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Add policy: choose its kind",
            "form": step,
            "kinds": [
                (kind, label, [setting.title for setting in SCHEMAS[kind].values()])
                for kind, label in Policy.Kind.choices
            ],
        }
        return TemplateResponse(request, "admin/fleet/policy/choose_kind.html", context)


@admin.register(PriceRate)
class PriceRateAdmin(admin.ModelAdmin):
    list_display = ("gpu_model", "node", "price_per_gpu_hour", "currency", "effective_from", "source")
    list_filter = ("currency", "gpu_model", ("node", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("node",)
    search_fields = ("gpu_model", "source")
    date_hierarchy = "effective_from"


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    fields = readonly_fields = ("name", "prefix", "created_at", "revoked_at", "last_used_at")
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug")
    inlines = [ApiKeyInline]


@admin.register(ApiKey)
class ApiKeyAdmin(ShownOnceAdmin):
    list_display = ("__str__", "team", "prefix", "created_at", "revoked_at", "last_used_at")
    list_filter = ("team",)
    list_select_related = ("team",)
    readonly_fields = ("prefix", "created_at", "revoked_at", "last_used_at")
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        secret = None if change else obj.issue()
        super().save_model(request, obj, form, change)
        if secret:
            self.secret_show(request, f"API key for {obj.team} (shown once, store it now): {secret}")

    @admin.action(description="Revoke the selected keys")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset.filter(revoked_at__isnull=True):
            key.revoke()
            key.save(update_fields=["revoked_at"])
        messages.success(request, "Keys revoked; requests with them now get 401.")


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    """The log is the audit trail: nobody deletes from it, superusers included."""

    list_display = ("created_at", "policy_kind", "action", "pool", "instance", "batch_job", "reason")
    list_filter = ("policy_kind", "action", "pool")
    list_select_related = ("pool", "instance__pool", "batch_job")
    search_fields = ("reason",)
    date_hierarchy = "created_at"


@admin.register(BatchJob)
class BatchJobAdmin(admin.ModelAdmin):
    """Jobs are queued here; the co-location policy alone starts and preempts them."""

    formfield_overrides = JSON_FORM_FIELDS
    list_display = ("name", "state", "actual_state", "exit_code", "priority", "memory_bytes", "gpu", "preemptions")
    list_filter = ("state",)
    list_select_related = ("gpu__node",)
    readonly_fields = (
        "state",
        "generation",
        "gpu",
        "started_at",
        "preempted_at",
        "finished_at",
        "preemptions",
        "actual_state",
        "container_id",
        "exit_code",
        "last_error",
    )


@admin.register(OrphanContainer)
class OrphanContainerAdmin(admin.ModelAdmin):
    """What agents report that nobody asked for; the reaper marks them for stopping after a grace period."""

    list_display = (
        "__str__",
        "name",
        "instance_id",
        "first_seen_at",
        "last_seen_at",
        "stop_requested_at",
        "stopped_at",
        "stop_outcome",
    )
    list_select_related = ("node",)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "team",
        "pool",
        "period",
        "amount",
        "spent_cents",
        "used",
        "soft_threshold_pct",
        "hard_threshold_pct",
        "blocked",
        "enabled",
    )
    list_filter = ("period", "enabled", "team", "pool")
    list_select_related = ("team", "pool")
    search_fields = ("name", "team__name", "pool__name")
    readonly_fields = ("spent", "spent_period_start", "evaluated_at", "blocked_period_start", "lifted_period_start")
    fields = (
        "name",
        "team",
        "pool",
        "period",
        "amount",
        "soft_threshold_pct",
        "hard_threshold_pct",
        "enabled",
        *readonly_fields,
    )
    actions = ["lift_block"]

    @admin.display(description="spent")
    def spent_cents(self, obj: Budget) -> str:
        return f"{money_cents(obj.spent)} {billing_currency()}"

    @admin.display(description="used")
    def used(self, obj: Budget) -> str:
        return f"{obj.spent / obj.amount:.0%}" if obj.amount else "-"

    @admin.display(description="blocking now", boolean=True)
    def blocked(self, obj: Budget) -> bool:
        first, _ = period_bounds(period=obj.period, now=timezone.now())
        return obj.blocked_period_start == first and obj.lifted_period_start != first

    @admin.action(description="Lift the block: let the team's requests through for the rest of this period")
    def lift_block(self, request: HttpRequest, queryset: QuerySet[Budget]) -> None:
        lifted = [budget.name for budget in queryset if budget_block_lift(budget=budget)]
        if lifted:
            messages.success(request, f"Lifted for this period: {', '.join(lifted)}.")
        else:
            messages.info(request, "None of the selected budgets blocks anything in its current period.")


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "pool", "threshold", "window_s", "for_s", "email_to", "webhook_url", "enabled")
    list_filter = ("kind", "enabled", "pool")
    list_select_related = ("pool",)
    search_fields = ("name", "email_to", "webhook_url")
    readonly_fields = ("threshold_meaning",)
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    fields = (
        "name",
        "kind",
        "pool",
        "threshold",
        "threshold_meaning",
        "window_s",
        "for_s",
        "email_to",
        "webhook_url",
        "enabled",
    )

    @admin.display(description="what the threshold means")
    def threshold_meaning(self, obj: AlertRule) -> str:
        rows = format_html_join(
            "",
            "<li>{}: {}</li>",
            ((label, AlertRule.THRESHOLD_MEANING[kind]) for kind, label in AlertRule.Kind.choices),
        )
        return format_html("<ul>{}</ul>", rows)


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    fields = readonly_fields = (
        "event",
        "channel",
        "target",
        "status",
        "attempts",
        "last_error",
        "created_at",
        "sent_at",
    )

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    deletable = True
    list_display = ("started_at", "rule", "key", "state", "value", "fired_at", "resolved_at")
    list_filter = ("state", "rule__kind", "rule")
    list_select_related = ("rule",)
    search_fields = ("key", "message")
    date_hierarchy = "started_at"
    inlines = [AlertDeliveryInline]


@admin.register(RequestLog)
class RequestLogAdmin(ReadOnlyAdmin):
    """Read-only: the gateway writes these; people only look, filter and export."""

    list_display = (
        "at",
        "team",
        "api_key",
        "pool",
        "instance",
        "endpoint",
        "tier",
        "rcf",
        "prompt_tokens",
        "output_tokens",
        "ttft_ms",
        "latency_ms",
        "status",
        "cold_start",
    )
    list_filter = ("status", "tier", "endpoint", "cold_start", "stream", "pool", "team")
    list_select_related = ("team", "api_key", "pool", "instance__pool")
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    deletable = True
    list_display = ("created_at", "alert", "event", "channel", "target", "status", "attempts", "sent_at")
    list_filter = ("status", "channel", "event")
    list_select_related = ("alert__rule",)
    search_fields = ("target", "last_error")
