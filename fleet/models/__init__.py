"""The fleet's domain model, one module per area, re-exported here."""

from fleet.models.costs import PriceRate
from fleet.models.nodes import Gpu, MigDevice, Node
from fleet.models.policies import Decision, Policy
from fleet.models.serving import Instance, ModelProfile, Pool
from fleet.models.teams import ApiKey, Team

__all__ = [
    "ApiKey",
    "Decision",
    "Gpu",
    "Instance",
    "MigDevice",
    "ModelProfile",
    "Node",
    "Policy",
    "Pool",
    "PriceRate",
    "Team",
]
