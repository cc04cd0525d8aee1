"""Level-triggered reconciliation of desired instances against running containers.

``reconcile`` is a pure function of (desired, actual): it looks only at the current
state, never at what happened before, so the agent can call it on every tick, after a
crash, or after a restart, and converge the same way. Applying its actions and calling
it again with the same desired list yields no actions. ``apply`` carries the actions out
against a ``Runtime``, one at a time, capturing each failure so that one broken
container does not hold up the rest; the next pass retries whatever is still wrong.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol, get_args

from agents.protocol import DesiredState
from agents.runtime import SPEC_LABEL, ContainerSpec, ContainerState, Runtime, spec_digest

DEFAULT_STOP_TIMEOUT_S = 30
# Enough of a crashed server's output to see the traceback, small enough to report.
CRASH_LOG_LINES = 50


@dataclass(frozen=True)
class DesiredInstance:
    """What the panel wants for one instance on this node.

    ``sleeping`` means a vLLM server that is up but has released its GPU memory through
    sleep mode (``sleep_level`` 1 keeps weights in CPU memory, 2 discards them).
    """

    instance_id: str
    generation: int
    state: DesiredState
    spec: ContainerSpec | None = None
    sleep_level: int = 1

    def __post_init__(self) -> None:
        if self.state not in get_args(DesiredState):
            raise ValueError(f"{self.instance_id}: unknown desired state {self.state!r}")
        if self.sleep_level not in {1, 2}:
            raise ValueError(f"{self.instance_id}: sleep_level must be 1 or 2")
        if self.state == "stopped":
            return
        if self.spec is None:
            raise ValueError(f"{self.instance_id}: desired {self.state} needs a spec")
        if (self.spec.instance_id, self.spec.generation) != (self.instance_id, self.generation):
            raise ValueError(
                f"{self.instance_id}: spec is for {self.spec.instance_id}"
                f" generation {self.spec.generation}, desired generation {self.generation}"
            )


@dataclass(frozen=True)
class Start:
    """Create and start (or adopt) the container of ``spec``."""

    spec: ContainerSpec
    reason: str


@dataclass(frozen=True)
class Stop:
    """Stop gracefully and remove one generation of an instance."""

    instance_id: str
    generation: int
    reason: str
    timeout_s: int = DEFAULT_STOP_TIMEOUT_S


@dataclass(frozen=True)
class Restart:
    """Replace a failed container of the desired generation: keep its logs, stop, remove, start.

    The stop is a no-op for an exited container but takes a paused one down gracefully,
    which Docker would otherwise refuse to remove.
    """

    spec: ContainerSpec
    reason: str
    timeout_s: int = DEFAULT_STOP_TIMEOUT_S


@dataclass(frozen=True)
class Sleep:
    """Ask the vLLM server to release GPU memory (POST /sleep?level=N)."""

    instance_id: str
    generation: int
    port: int
    level: int
    reason: str


@dataclass(frozen=True)
class Wake:
    """Ask a sleeping vLLM server to take its GPU memory back (POST /wake_up)."""

    instance_id: str
    generation: int
    port: int
    reason: str


@dataclass(frozen=True)
class ReportOrphan:
    """A managed container no desired instance accounts for; reported, never killed.

    Killing it automatically would turn a panel bug (an instance dropped from the
    desired list) into an outage; an operator decides instead.
    """

    container: ContainerState
    reason: str


Action = Start | Stop | Restart | Sleep | Wake | ReportOrphan

# Order of execution: free GPUs (stop, sleep) before claiming them (restart, start, wake).
_ORDER: dict[type, int] = {ReportOrphan: 0, Stop: 1, Sleep: 2, Restart: 3, Start: 4, Wake: 5}


def _describe_exit(container: ContainerState) -> str:
    parts = [f"status {container.status}"]
    if container.exit_code is not None:
        parts.append(f"exit code {container.exit_code}")
    if container.oom_killed:
        parts.append("killed for running out of memory")
    if container.error:
        parts.append(f"error: {container.error}")
    return ", ".join(parts)


def _same_server(spec: ContainerSpec, containers: list[ContainerState]) -> ContainerState | None:
    """The newest live container of an older generation that runs exactly ``spec`` (its ``SPEC_LABEL``)."""
    digest = spec_digest(spec)
    same = [
        c for c in containers if c.running and c.generation < spec.generation and c.labels.get(SPEC_LABEL) == digest
    ]
    return max(same, key=lambda c: c.generation, default=None)


def _reconcile_instance(
    want: DesiredInstance,
    containers: list[ContainerState],
    asleep: Collection[str],
    stop_timeout_s: int,
) -> list[Action]:
    actions: list[Action] = []
    if want.state == "stopped":
        for c in containers:
            actions.append(
                Stop(
                    c.instance_id,
                    c.generation,
                    f"desired stopped; container generation {c.generation} is {c.status}",
                    stop_timeout_s,
                )
            )
        return actions

    spec = want.spec
    assert spec is not None  # guaranteed by DesiredInstance.__post_init__
    current = [c for c in containers if c.generation == want.generation]
    kept = None if any(c.running for c in current) else _same_server(spec, containers)
    if kept is not None:
        # Only the desired state moved (a sleep, a wake): the running server serves the new generation.
        current = [kept]
    for c in containers:
        if c.generation != want.generation and c is not kept:
            word = "superseded by" if c.generation < want.generation else "differs from"
            actions.append(
                Stop(
                    c.instance_id,
                    c.generation,
                    f"generation {c.generation} {word} desired generation {want.generation}",
                    stop_timeout_s,
                )
            )

    # The name is unique per generation, so there is at most one; prefer a live one.
    live = [c for c in current if c.running]
    container = live[0] if live else (current[0] if current else None)
    if container is None:
        actions.append(Start(spec, f"desired {want.state}; no container for generation {want.generation}"))
        return actions
    if container.status == "created":
        actions.append(Start(spec, "container was created but never started"))
        return actions
    if container.status == "removing":
        # Docker is already removing it; the next pass will find it gone and start it.
        return actions
    if not container.running:
        reason = f"desired {want.state} but container is down ({_describe_exit(container)})"
        actions.append(Restart(spec, reason, stop_timeout_s))
        return actions

    is_asleep = want.instance_id in asleep
    if want.state == "sleeping" and not is_asleep:
        actions.append(
            Sleep(
                want.instance_id,
                want.generation,
                spec.port,
                want.sleep_level,
                f"desired sleeping; server is awake, sleep at level {want.sleep_level}",
            )
        )
    elif want.state == "running" and is_asleep:
        actions.append(Wake(want.instance_id, want.generation, spec.port, "desired running; server is asleep"))
    return actions


def reconcile(
    desired: Iterable[DesiredInstance],
    actual: Iterable[ContainerState],
    *,
    asleep: Collection[str] = frozenset(),
    stop_timeout_s: int = DEFAULT_STOP_TIMEOUT_S,
) -> list[Action]:
    """The actions that move ``actual`` toward ``desired``; empty when they agree.

    ``actual`` is this node's managed containers (``Runtime.list_managed``). ``asleep``
    holds the instance ids whose vLLM server reports itself asleep (GET /is_sleeping):
    Docker cannot tell a sleeping server from an awake one. Actions come ordered so that
    GPU memory is released before it is claimed again, and deterministically within
    each kind.
    """
    wanted: dict[str, DesiredInstance] = {}
    for want in desired:
        if want.instance_id in wanted:
            raise ValueError(f"instance {want.instance_id} is desired twice")
        wanted[want.instance_id] = want

    by_instance: dict[str, list[ContainerState]] = {}
    actions: list[Action] = []
    for c in actual:
        if c.instance_id in wanted:
            by_instance.setdefault(c.instance_id, []).append(c)
        else:
            actions.append(
                ReportOrphan(
                    c,
                    f"container {c.name or c.container_id} (instance {c.instance_id or '?'},"
                    f" generation {c.generation}, {c.status}) matches no desired instance",
                )
            )

    for instance_id in sorted(wanted):
        containers = sorted(by_instance.get(instance_id, []), key=lambda c: c.generation)
        actions += _reconcile_instance(wanted[instance_id], containers, asleep, stop_timeout_s)

    return sorted(actions, key=lambda a: (_ORDER[type(a)], _sort_key(a)))


def _sort_key(action: Action) -> tuple[str, int]:
    if isinstance(action, ReportOrphan):
        return (action.container.instance_id, action.container.generation)
    if isinstance(action, Start | Restart):
        return (action.spec.instance_id, action.spec.generation)
    return (action.instance_id, action.generation)


class SleepControl(Protocol):
    """Talks to a vLLM server's sleep-mode endpoints; the agent supplies one over HTTP."""

    def sleep(self, action: Sleep) -> None:
        """POST /sleep?level=N on the server of ``action``."""
        ...

    def wake_up(self, action: Wake) -> None:
        """POST /wake_up on the server of ``action``."""
        ...


@dataclass(frozen=True)
class ActionResult:
    """Outcome of one action; ``detail`` carries e.g. a crashed container's last log lines."""

    action: Action
    ok: bool
    error: str | None = None
    state: ContainerState | None = None
    detail: str = ""


def _run(action: Action, runtime: Runtime, sleep_control: SleepControl | None) -> ActionResult:
    if isinstance(action, ReportOrphan):
        return ActionResult(action, ok=True, detail="reported only; left running")
    if isinstance(action, Start):
        return ActionResult(action, ok=True, state=runtime.start(action.spec))
    if isinstance(action, Stop):
        runtime.stop(action.instance_id, action.timeout_s, generation=action.generation)
        runtime.remove(action.instance_id, generation=action.generation)
        return ActionResult(action, ok=True)
    if isinstance(action, Restart):
        spec = action.spec
        try:
            logs = runtime.logs_tail(spec.instance_id, CRASH_LOG_LINES, generation=spec.generation)
        except Exception as exc:  # the logs are a courtesy; the restart must go on
            logs = f"(logs unavailable: {exc})"
        runtime.stop(spec.instance_id, action.timeout_s, generation=spec.generation)
        runtime.remove(spec.instance_id, generation=spec.generation)
        return ActionResult(action, ok=True, state=runtime.start(spec), detail=logs)
    if sleep_control is None:
        return ActionResult(action, ok=False, error="no sleep control given to apply()")
    if isinstance(action, Sleep):
        sleep_control.sleep(action)
    else:
        sleep_control.wake_up(action)
    return ActionResult(action, ok=True)


def apply(
    actions: Iterable[Action],
    runtime: Runtime,
    *,
    sleep_control: SleepControl | None = None,
) -> list[ActionResult]:
    """Carry out ``actions`` in order; every failure is captured in its result, none raised."""
    results: list[ActionResult] = []
    for action in actions:
        try:
            results.append(_run(action, runtime, sleep_control))
        except Exception as exc:  # one failing container must not stop the others
            results.append(ActionResult(action, ok=False, error=f"{type(exc).__name__}: {exc}"))
    return results
