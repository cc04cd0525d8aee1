"""What is served, in which pools, by which vLLM instances."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from fleet import catalog, states


def validate_str_list(value: object) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError('Enter a JSON list of strings, e.g. ["--enforce-eager"].')


def validate_str_dict(value: object) -> None:
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and isinstance(item, str) for key, item in value.items()
    ):
        raise ValidationError('Enter a JSON object of strings, e.g. {"HF_HOME": "/models"}.')


class ModelProfile(models.Model):
    """How one model is served by vLLM: the settings the method tunes per use case."""

    class UseCase(models.TextChoices):
        CHAT = "chat", "chat"
        SUMMARY = "summary", "document summary"
        CODE = "code", "code analysis"
        CUSTOM = "custom", "custom"

    name = models.CharField(max_length=100, unique=True)
    use_case = models.CharField(max_length=16, choices=UseCase.choices, default=UseCase.CUSTOM)
    image = models.CharField("container image", max_length=255, default="vllm/vllm-openai:v0.11.0")
    model = models.CharField(max_length=255, help_text="Model path or hub id passed as --model.")
    served_name = models.CharField(
        "served model name", max_length=100, help_text="--served-model-name: what clients ask for."
    )
    tokenizer = models.CharField(
        max_length=255, blank=True, help_text="tokenizer.json the gateway counts tokens with; blank for an estimate."
    )
    context_limit = models.PositiveIntegerField(
        "context limit (tokens)",
        null=True,
        blank=True,
        help_text="Longest context the model supports. Blank: taken from the catalogue for known models.",
    )
    max_model_len = models.PositiveIntegerField(
        "max model length (tokens)",
        default=8192,
        validators=[MinValueValidator(256)],
        help_text="--max-model-len: the longest prompt plus output one request may take.",
    )
    max_num_seqs = models.PositiveIntegerField(
        "max concurrent sequences",
        default=64,
        validators=[MinValueValidator(1)],
        help_text="--max-num-seqs: requests one instance runs at once.",
    )
    dtype = models.CharField(
        "model dtype",
        max_length=16,
        choices=[("auto", "auto"), ("bfloat16", "bfloat16"), ("float16", "float16"), ("float32", "float32 (CPU)")],
        default="auto",
    )
    quantization = models.CharField(
        max_length=32,
        choices=list(catalog.QUANTIZATIONS.items()),
        blank=True,
        default="",
        error_messages={"invalid_choice": "Unknown quantization %(value)r: choose one vLLM supports."},
    )
    kv_cache_dtype = models.CharField(
        "KV-cache dtype",
        max_length=16,
        choices=list(catalog.KV_CACHE_DTYPES.items()),
        default="auto",
        error_messages={"invalid_choice": "Unknown KV-cache dtype %(value)r."},
    )
    enable_prefix_caching = models.BooleanField("prefix caching", default=False)
    enable_sleep_mode = models.BooleanField(
        "sleep mode",
        default=False,
        help_text="vLLM sleep mode (CUDA only): lets idle reclaim free GPU memory and wake in ~1 s.",
    )
    gpu_memory_utilization = models.FloatField(
        "GPU memory utilization",
        default=0.9,
        validators=[MinValueValidator(0.05), MaxValueValidator(0.98)],
        help_text="--gpu-memory-utilization: the share of the GPU's memory vLLM reserves, from 0.05 to 0.98.",
    )
    extra_args = models.JSONField("extra vLLM arguments", default=list, blank=True, validators=[validate_str_list])
    env = models.JSONField("environment variables", default=dict, blank=True, validators=[validate_str_dict])
    volumes = models.JSONField(
        default=dict, blank=True, validators=[validate_str_dict], help_text="Host path -> container path."
    )
    notes = models.TextField(blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def spec(self) -> catalog.ModelSpec | None:
        return catalog.model_spec(self.model)

    @property
    def effective_context_limit(self) -> int | None:
        if self.context_limit:
            return self.context_limit
        spec = self.spec
        return spec.context_limit if spec else None

    def clean(self) -> None:
        # A JSON box left empty in a form arrives as None, which the columns refuse: it means "none".
        for name, empty in (("extra_args", list), ("env", dict), ("volumes", dict)):
            if getattr(self, name) is None:
                setattr(self, name, empty())
        limit = self.effective_context_limit
        if limit and self.max_model_len and self.max_model_len > limit:
            raise ValidationError(
                {"max_model_len": f"{self.model} supports at most {limit:,} tokens; {self.max_model_len:,} requested."}
            )


class Pool(models.Model):
    """A tier of capacity serving one model profile under one SLA."""

    class Tier(models.TextChoices):
        S = "S", "S (complex, exclusive GPUs)"
        M = "M", "M (medium, MIG slices)"
        L = "L", "L (light, shared GPUs)"

    class Isolation(models.TextChoices):
        EXCLUSIVE = "exclusive", "exclusive GPU"
        MIG = "mig", "MIG slice"
        SHARED = "shared", "shared GPU"

    class SlaMetric(models.TextChoices):
        TTFT = "ttft", "time to first token"
        E2E = "e2e", "end-to-end latency"

    name = models.SlugField(max_length=100, unique=True)
    tier = models.CharField(max_length=1, choices=Tier.choices)
    isolation = models.CharField(max_length=16, choices=Isolation.choices)
    model_profile = models.ForeignKey(ModelProfile, on_delete=models.PROTECT, related_name="pools")
    gpu_model = models.CharField(
        "GPU model",
        max_length=100,
        blank=True,
        help_text="Run only on GPUs of this model (as NVML names it); blank for any.",
    )
    mig_profile = models.CharField(
        "MIG profile", max_length=32, blank=True, help_text="MIG slice size for MIG pools, e.g. 1g.10gb."
    )
    sla_metric = models.CharField("SLA metric", max_length=8, choices=SlaMetric.choices, default=SlaMetric.TTFT)
    sla_percentile = models.PositiveSmallIntegerField(
        "SLA percentile", default=95, validators=[MinValueValidator(50), MaxValueValidator(99)]
    )
    sla_latency_ms = models.PositiveIntegerField("SLA latency (ms)", default=500, validators=[MinValueValidator(1)])
    sla_e2e_latency_ms = models.PositiveIntegerField(
        "SLA end-to-end latency (ms)",
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="A bound on the whole answer's latency (vLLM's e2e_request_latency_seconds) at the SLA "
        "percentile, beside the SLA metric's: autoscale scales out when either is breached. Blank: none.",
    )
    sla_ms_per_1k_prompt_tokens = models.FloatField(
        "SLA ms per 1k prompt tokens",
        default=0.0,
        validators=[MinValueValidator(0.0)],
        help_text="Lets the time-to-first-token bound grow with the prompt: each request is judged against the SLA "
        "latency plus this many ms per 1,000 prompt tokens (500 ms + 20 ms per 1k gives a 30,000-token prompt "
        "1,100 ms). Judged from the gateway's request log, since vLLM's histograms hold no prompt lengths. "
        "0: one flat bound for every request.",
    )
    util_band_low = models.FloatField(
        "utilization band low",
        default=0.50,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Autoscale scales in under this load: the share of an instance's capacity in use (running "
        "sequences over max concurrent sequences, KV-cache usage, prompt tokens a second over the autoscale "
        "policy's prefill capacity), not the GPU duty cycle.",
    )
    util_band_high = models.FloatField(
        "utilization band high",
        default=0.65,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Autoscale scales out over this load (the same measure as the band's low edge).",
    )
    min_instances = models.PositiveSmallIntegerField(default=0)
    max_instances = models.PositiveSmallIntegerField(default=4)
    idle_minimize_after_s = models.PositiveIntegerField(
        "minimize after idle (s)", default=300, help_text="Idle seconds before the first idle stage."
    )
    idle_stop_after_s = models.PositiveIntegerField(
        "stop after idle (s)", default=600, help_text="Idle seconds before the instance is stopped."
    )
    prewarm_margin_s = models.PositiveIntegerField(
        "pre-warm margin (s)", default=30, help_text="Start this long before predicted traffic."
    )
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["tier", "name"]
        indexes = [models.Index(fields=["tier", "enabled"], name="pool_tier_enabled")]

    def __str__(self) -> str:
        return self.name

    @property
    def sla_label(self) -> str:
        label = f"P{self.sla_percentile} {self.get_sla_metric_display()} <= {self.sla_latency_ms} ms"
        if self.sla_ms_per_1k_prompt_tokens:
            label = f"{label} + {self.sla_ms_per_1k_prompt_tokens:g} ms per 1k prompt tokens"
        return label if self.sla_e2e_latency_ms is None else f"{label}, end-to-end <= {self.sla_e2e_latency_ms} ms"

    @property
    def ttft_bound_grows(self) -> bool:
        """Whether each request is judged against its own TTFT bound (``agents.histograms.ttft_bound_ms``),
        from the gateway's request log, rather than the histograms' percentile against one flat bound."""
        return self.sla_ms_per_1k_prompt_tokens > 0 and self.sla_metric == self.SlaMetric.TTFT

    def clean(self) -> None:
        errors: dict[str, str] = {}
        low, high = self.util_band_low, self.util_band_high
        if low is not None and high is not None and low >= high:
            errors["util_band_low"] = (
                f"The utilization band's low ({low * 100:g}%) must be below its high ({high * 100:g}%)."
            )
        if (
            self.min_instances is not None
            and self.max_instances is not None
            and self.min_instances > self.max_instances
        ):
            errors["min_instances"] = (
                f"Minimum instances ({self.min_instances}) is above maximum ({self.max_instances})."
            )
        minimize, stop = self.idle_minimize_after_s, self.idle_stop_after_s
        if minimize is not None and stop is not None and minimize > stop:
            errors["idle_minimize_after_s"] = "The first idle stage must come no later than the stop."
        if self.sla_ms_per_1k_prompt_tokens and self.sla_metric != self.SlaMetric.TTFT:
            errors["sla_ms_per_1k_prompt_tokens"] = (
                "The per-prompt-token term lengthens the time-to-first-token bound; this pool's SLA metric is "
                f"{self.get_sla_metric_display()}. Set it to 0 or choose time to first token."
            )
        if self.isolation == self.Isolation.MIG:
            errors.update(self._mig_errors())
        elif self.mig_profile:
            errors["mig_profile"] = "Only MIG pools take a MIG profile."
        if errors:
            raise ValidationError(errors)

    def _mig_errors(self) -> dict[str, str]:
        if self.gpu_model and catalog.gpu_supports_mig(self.gpu_model) is False:
            return {
                "isolation": f"{self.gpu_model} has no MIG, so a MIG-slice pool cannot run on it: "
                f"MIG exists on {', '.join(catalog.MIG_FAMILIES)} only. Use a shared or exclusive pool."
            }
        if not self.mig_profile:
            return {"mig_profile": "A MIG pool needs a MIG profile, e.g. 1g.10gb."}
        try:
            catalog.mig_slices(self.mig_profile)
        except ValueError as exc:
            return {"mig_profile": str(exc)}
        spec = catalog.gpu_spec(self.gpu_model) if self.gpu_model else None
        if spec is not None and self.mig_profile not in spec.mig_profiles:
            return {"mig_profile": f"{spec.name} offers {', '.join(spec.mig_profiles)}; not {self.mig_profile}."}
        return {}


class Instance(models.Model):
    """One vLLM server. The panel owns ``desired_state``; the agent reports ``actual_state``."""

    class Desired(models.TextChoices):
        RUNNING = states.RUNNING, "running"
        SLEEPING = states.SLEEPING, "sleeping (minimized)"
        STOPPED = states.STOPPED, "stopped"

    class Actual(models.TextChoices):
        PENDING = states.PENDING, "pending"
        STARTING = states.STARTING, "starting"
        READY = states.READY, "ready"
        SLEEPING = states.SLEEPING, "sleeping"
        STOPPING = states.STOPPING, "stopping"
        STOPPED = states.STOPPED, "stopped"
        FAILED = states.FAILED, "failed"
        UNKNOWN = states.UNKNOWN, "unknown"

    pool = models.ForeignKey(Pool, on_delete=models.PROTECT, related_name="instances")
    gpu = models.ForeignKey(
        "fleet.Gpu", on_delete=models.SET_NULL, null=True, blank=True, related_name="instances", verbose_name="GPU"
    )
    mig_device = models.ForeignKey(
        "fleet.MigDevice",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="instances",
        verbose_name="MIG device",
    )
    desired_state = models.CharField(max_length=16, choices=Desired.choices, default=Desired.RUNNING)
    actual_state = models.CharField(max_length=16, choices=Actual.choices, default=Actual.PENDING)
    generation = models.PositiveBigIntegerField(
        default=1, help_text="Bumped on every change of desired state; the agent acts on the newest."
    )
    actual_generation = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="Generation of the container the agent last reported."
    )
    endpoint = models.URLField(blank=True)
    container_id = models.CharField(max_length=80, blank=True)
    last_error = models.TextField(blank=True, help_text="The agent's last error for this instance.")
    created_at = models.DateTimeField(auto_now_add=True)
    desired_changed_at = models.DateTimeField(auto_now_add=True)
    actual_changed_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    last_request_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="Time to live: the reaper stops the instance at this time (test instances)."
    )

    class Meta:
        ordering = ["pool", "id"]
        indexes = [
            models.Index(fields=["pool", "actual_state"], name="instance_pool_actual"),
            models.Index(fields=["desired_state", "actual_state"], name="instance_desired_actual"),
            models.Index(fields=["gpu", "actual_state"], name="instance_gpu_actual"),
        ]

    def __str__(self) -> str:
        return f"{self.pool.name}#{self.pk}" if self.pk else f"{self.pool.name}#new"

    def clean(self) -> None:
        if not self.pool_id:
            return
        errors: dict[str, str] = {}
        # Each foreign key is checked through its *_id first (no query when it is empty); the walrus
        # binds the related row so the type checker sees it is not None.
        if (
            self.mig_device_id
            and self.gpu_id
            and (mig_device := self.mig_device) is not None
            and mig_device.gpu_id != self.gpu_id
        ):
            errors["mig_device"] = f"{self.mig_device} is not on {self.gpu}."
        if self.pool.isolation == Pool.Isolation.MIG:
            if self.gpu_id and (gpu := self.gpu) is not None and not gpu.mig_enabled:
                errors["gpu"] = f"{gpu} has MIG {gpu.get_mig_mode_display()}; pool {self.pool} needs a MIG slice."
            elif self.gpu_id and not self.mig_device_id:
                errors["mig_device"] = f"Pool {self.pool} is a MIG pool: choose a MIG device on {self.gpu}."
        elif self.mig_device_id:
            errors["mig_device"] = f"Pool {self.pool} is not a MIG pool; leave the MIG device empty."
        if (
            self.pool.gpu_model
            and self.gpu_id
            and (gpu := self.gpu) is not None
            and gpu.model_name != self.pool.gpu_model
        ):
            errors["gpu"] = f"Pool {self.pool} runs on {self.pool.gpu_model}; {gpu} is a {gpu.model_name}."
        if errors:
            raise ValidationError(errors)


class InstanceEvent(models.Model):
    """Each change of an instance's actual state: the history allocation and spend are computed from."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=Instance.Actual.choices)
    generation = models.PositiveBigIntegerField(null=True, blank=True)
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    mig_device = models.ForeignKey(
        "fleet.MigDevice", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )

    class Meta:
        ordering = ["instance", "at", "id"]
        indexes = [models.Index(fields=["instance", "at"], name="instance_event_time")]

    def __str__(self) -> str:
        return f"{self.instance_id} {self.state} at {self.at:%Y-%m-%d %H:%M:%S}"
