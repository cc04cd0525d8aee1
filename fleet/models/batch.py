"""Light batch work that borrows the idle compute of inference GPUs."""

from __future__ import annotations

from django.core.validators import MinValueValidator
from django.db import models

from fleet import states
from fleet.models.serving import validate_str_list


class BatchJob(models.Model):
    """A container the co-location policy starts on a GPU with spare memory and compute.

    ``state`` is the panel's intent, like an instance's desired state: the agent runs a job
    that is ``running`` on one of its GPUs and stops one that is ``preempted``. A preempted
    job is back in the queue and may start again, on any GPU that fits it. What the agent
    reports of the current generation lands in ``actual_state``, ``exit_code`` and
    ``last_error``; a container that exits ends the job, ``done`` with exit code 0 and
    ``failed`` otherwise (or when the agent refuses to run it).
    """

    class State(models.TextChoices):
        QUEUED = states.JOB_QUEUED, "queued"
        RUNNING = states.JOB_RUNNING, "running"
        PREEMPTED = states.JOB_PREEMPTED, "preempted (requeued)"
        DONE = states.JOB_DONE, "done"
        FAILED = states.JOB_FAILED, "failed"

    name = models.CharField(max_length=100)
    image = models.CharField(max_length=255)
    command = models.JSONField(default=list, blank=True, validators=[validate_str_list])
    memory_bytes = models.PositiveBigIntegerField(
        validators=[MinValueValidator(1)], help_text="GPU memory the job needs at its peak."
    )
    priority = models.SmallIntegerField(default=0, help_text="Higher runs first.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    generation = models.PositiveBigIntegerField(default=1, help_text="Bumped on every change of state.")
    gpu = models.ForeignKey("fleet.Gpu", on_delete=models.SET_NULL, null=True, blank=True, related_name="batch_jobs")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    preempted_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    preemptions = models.PositiveIntegerField(default=0)
    actual_state = models.CharField(max_length=16, blank=True, help_text="What its agent last reported.")
    container_id = models.CharField(max_length=80, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-priority", "created_at", "id"]
        indexes = [models.Index(fields=["state", "-priority", "created_at"], name="batch_job_queue")]

    def __str__(self) -> str:
        return f"{self.name} ({self.get_state_display()})"


class OrphanContainer(models.Model):
    """A managed container an agent reports that no desired instance accounts for.

    Recorded at ingest with the time it was first seen; the reaper asks for it to be
    stopped once it has outlived the grace period (``stop_requested_at``), and the node's
    reply carries that request to the agent. The agent's answer is kept (``stopped_at``,
    ``stop_outcome``): a reaped container's row stays as the record of what was stopped.
    """

    node = models.ForeignKey("fleet.Node", on_delete=models.CASCADE, related_name="orphans")
    container_id = models.CharField(max_length=80)
    name = models.CharField(max_length=255, blank=True)
    instance_id = models.BigIntegerField(null=True, blank=True, help_text="The instance label it carries, if any.")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    stop_requested_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="When its agent reported it stopped or gone.")
    stop_outcome = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["node", "first_seen_at"]
        constraints = [models.UniqueConstraint(fields=["node", "container_id"], name="orphan_node_container_unique")]

    def __str__(self) -> str:
        return f"{self.node.name}:{self.container_id[:12]}"
