"""The fleet's domain model, one module per area, re-exported here."""

from fleet.models.costs import PriceRate
from fleet.models.gateway import RequestLog
from fleet.models.nodes import Gpu, JoinToken, MigDevice, Node
from fleet.models.policies import Decision, Policy
from fleet.models.serving import Instance, InstanceEvent, ModelProfile, Pool
from fleet.models.teams import ApiKey, Team
from fleet.models.telemetry import GpuSample, InstanceSample

__all__ = [
    "ApiKey",
    "Decision",
    "Gpu",
    "GpuSample",
    "Instance",
    "InstanceEvent",
    "InstanceSample",
    "JoinToken",
    "MigDevice",
    "ModelProfile",
    "Node",
    "Policy",
    "Pool",
    "PriceRate",
    "RequestLog",
    "Team",
]
