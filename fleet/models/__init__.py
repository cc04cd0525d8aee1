"""The fleet's domain model, one module per area, re-exported here."""

from fleet.models.batch import BatchJob, OrphanContainer
from fleet.models.costs import Alert, AlertDelivery, AlertRule, Budget, PriceRate
from fleet.models.gateway import RequestLog, UsageHour
from fleet.models.nodes import Gpu, JoinToken, MigDevice, Node
from fleet.models.policies import Decision, Policy
from fleet.models.serving import Instance, InstanceEvent, ModelProfile, Pool
from fleet.models.teams import ApiKey, Team
from fleet.models.telemetry import (
    GpuDay,
    GpuHour,
    GpuMinute,
    GpuSample,
    InstanceSample,
    PoolHour,
    PoolMinute,
    RollupWatermark,
)
from fleet.models.tuning import TuningRun

__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertRule",
    "ApiKey",
    "BatchJob",
    "Budget",
    "Decision",
    "Gpu",
    "GpuDay",
    "GpuHour",
    "GpuMinute",
    "GpuSample",
    "Instance",
    "InstanceEvent",
    "InstanceSample",
    "JoinToken",
    "MigDevice",
    "ModelProfile",
    "Node",
    "OrphanContainer",
    "Policy",
    "Pool",
    "PoolHour",
    "PoolMinute",
    "PriceRate",
    "RequestLog",
    "RollupWatermark",
    "Team",
    "TuningRun",
    "UsageHour",
]
