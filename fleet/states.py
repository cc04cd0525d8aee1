"""Instance and batch job states, and which of them hold a GPU: the one place each is defined.

Pure Python, so policies, costs, selectors and the simulator share it without Django; the
models build their choices from it (the stored values are these strings).

Which states hold a GPU is one question with one parameter. A container holds its device's
memory from the moment it starts loading the model until its process exits, so ``starting``,
``ready`` and ``stopping`` hold it. A sleeping vLLM (sleep level 1 offloads the weights to CPU
memory, level 2 drops them; both free the KV cache) keeps little more than its CUDA context,
so for memory it holds nothing; its container still occupies the device, though, and whether
that time is billed is a billing policy (``FLEET_COST_SLEEPING_HOLDS_GPU``), the one input.
"""

from __future__ import annotations

# An instance's desired state: what the panel asks of the agent.
RUNNING = "running"
SLEEPING = "sleeping"
STOPPED = "stopped"
DESIRED_STATES = (RUNNING, SLEEPING, STOPPED)

# An instance's actual state: what the agent last reported (``pending`` until it has).
PENDING = "pending"
STARTING = "starting"
READY = "ready"
STOPPING = "stopping"
FAILED = "failed"
UNKNOWN = "unknown"
ACTUAL_STATES = (PENDING, STARTING, READY, SLEEPING, STOPPING, STOPPED, FAILED, UNKNOWN)

# A batch job's state: the panel's intent, like an instance's desired state.
JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_PREEMPTED = "preempted"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_STATES = (JOB_QUEUED, JOB_RUNNING, JOB_PREEMPTED, JOB_DONE, JOB_FAILED)
# Jobs that may be started on a GPU: new ones and preempted ones, which are back in the queue.
JOB_WAITING = frozenset({JOB_QUEUED, JOB_PREEMPTED})
# Jobs whose container the agent is told about: running ones, and preempted ones it must stop.
JOB_ON_NODE = frozenset({JOB_RUNNING, JOB_PREEMPTED})
JOB_ENDED = frozenset({JOB_DONE, JOB_FAILED})

_HOLDS_MEMORY = frozenset({STARTING, READY, STOPPING})
# What an instance told to serve may be on its way from: not serving yet, and not failed.
ON_ITS_WAY = frozenset({PENDING, STARTING, SLEEPING, STOPPED, STOPPING})


def gpu_holding_states(*, sleeping_holds_gpu: bool) -> frozenset[str]:
    """The actual states in which an instance holds its device.

    Placement asks with ``sleeping_holds_gpu=False`` (memory: a sleeping engine has freed
    it); billing asks with its setting (a sleeping container still occupies the device).
    """
    return _HOLDS_MEMORY | {SLEEPING} if sleeping_holds_gpu else _HOLDS_MEMORY


def instance_occupies_device(*, desired_state: str, actual_state: str) -> bool:
    """Whether placement must count an instance against its device: it holds memory now
    (until its process exits, even when told to stop) or will (it is not desired stopped)."""
    return desired_state != STOPPED or actual_state in gpu_holding_states(sleeping_holds_gpu=False)
