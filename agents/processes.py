"""A ``Runtime`` that runs servers as local processes instead of Docker containers.

It exists for the demo, where a laptop runs a whole fleet without Docker or GPUs, and
for hosts that run a vLLM build straight from a virtualenv. The semantics are Docker's,
so ``agents.reconcile`` drives it unchanged: each (instance, generation) has one
deterministic name, a second ``start`` of the same spec adopts the running process, and
the record of what runs lives outside the agent (one JSON file per process in the state
directory, carrying the same ``gpufleet.*`` labels), so a restarted agent finds and
adopts the processes it started. Which program serves an image is configured: a
``Launcher`` maps an image pattern to a command line that the spec's server flags follow.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agents.runtime import (
    GENERATION_LABEL,
    INSTANCE_LABEL,
    NODE_LABEL,
    ContainerSpec,
    ContainerState,
    ImageMissing,
    RuntimeFailure,
    managed_labels,
)

_KILL_WAIT_S = 5.0
_POLL_S = 0.05


@dataclass(frozen=True)
class Launcher:
    """Images matching ``pattern`` run as ``command`` followed by the spec's server flags.

    ``{python}`` in the command stands for the agent's own interpreter.
    """

    pattern: str
    command: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Launcher:
        """``PATTERN=COMMAND``, e.g. ``simulated/vllm:*={python} -m fleet.demo.engine_server``."""
        pattern, sep, command = text.partition("=")
        if not sep or not pattern.strip() or not command.strip():
            raise ValueError(f"launcher {text!r}: expected IMAGE_PATTERN=COMMAND")
        return cls(pattern.strip(), tuple(shlex.split(command)))

    def argv(self, spec: ContainerSpec) -> list[str]:
        return [part.replace("{python}", sys.executable) for part in self.command] + list(spec.command)


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a reused pid is not mistaken for ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    current = _process_start_time(pid)
    if started is not None and current is not None and current != started:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True


class ProcessRuntime:
    """``Runtime`` over local processes, one record file per (instance, generation).

    ``env_for`` adds environment variables per spec (the simulated GPUs use it to tell an
    engine which GPUs it runs on, as Docker's device requests tell a container).
    """

    def __init__(
        self,
        state_dir: Path,
        node_name: str,
        launchers: Sequence[Launcher],
        *,
        env_for: Callable[[ContainerSpec], Mapping[str, str]] | None = None,
    ) -> None:
        if not node_name:
            raise ValueError("node_name must not be empty")
        self.dir = Path(state_dir) / "processes"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.node_name = node_name
        self.launchers = tuple(launchers)
        self.env_for = env_for
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # -- records ------------------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _records(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.dir.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if record.get("labels", {}).get(NODE_LABEL) == self.node_name:
                records.append(record)
        return records

    def _write(self, record: dict[str, Any]) -> None:
        path = self._record_path(record["name"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)

    def _refresh(self, record: dict[str, Any]) -> dict[str, Any]:
        """Bring a record's status up to date with the process it names."""
        if record["status"] != "running":
            return record
        pid = record["pid"]
        child = self._children.get(pid)
        if child is not None:
            code = child.poll()
            if code is None:
                return record
            self._children.pop(pid, None)
            record.update(status="exited", exit_code=code)
        elif _alive(pid, record.get("proc_start")):
            return record
        else:
            record.update(status="exited", exit_code=record.get("exit_code"))
        record["finished_at"] = time.time()
        self._write(record)
        return record

    def _state(self, record: dict[str, Any]) -> ContainerState:
        labels = record["labels"]
        try:
            generation = int(labels.get(GENERATION_LABEL, ""))
        except ValueError:
            generation = -1
        code = record.get("exit_code")
        error = "" if record["status"] == "running" or code in (0, None) else f"exit code {code}"
        return ContainerState(
            instance_id=labels.get(INSTANCE_LABEL, ""),
            generation=generation,
            container_id=f"pid-{record['pid']}",
            status=record["status"],
            exit_code=None if record["status"] == "running" else code,
            started_at=datetime.fromtimestamp(record["started_at"], tz=UTC),
            labels=labels,
            name=record["name"],
            node_name=labels.get(NODE_LABEL, ""),
            error=error,
        )

    def _matching(self, instance_id: str, generation: int | None) -> list[dict[str, Any]]:
        return [
            self._refresh(record)
            for record in self._records()
            if record["labels"].get(INSTANCE_LABEL) == instance_id
            and (generation is None or record["labels"].get(GENERATION_LABEL) == str(generation))
        ]

    # -- Runtime ------------------------------------------------------------------------

    def list_managed(self) -> list[ContainerState]:
        states = [self._state(self._refresh(record)) for record in self._records()]
        return sorted(states, key=lambda s: (s.instance_id, s.generation, s.container_id))

    def _launcher(self, image: str) -> Launcher:
        for launcher in self.launchers:
            if fnmatch.fnmatchcase(image, launcher.pattern):
                return launcher
        raise ImageMissing(f"no launcher on node {self.node_name} runs image {image!r}; add one with --launcher")

    def start(self, spec: ContainerSpec) -> ContainerState:
        """Start ``spec``'s process, or adopt it: a running record of the same name wins.

        A stopped record of the same name is started again, as Docker restarts a
        stopped container, with the same command line.
        """
        if spec.node_name != self.node_name:
            raise RuntimeFailure(
                f"spec for {spec.instance_id} targets node {spec.node_name!r}, this runtime manages {self.node_name!r}"
            )
        name = spec.container_name
        existing = self._matching(spec.instance_id, spec.generation)
        if existing and existing[0]["status"] == "running":
            return self._state(existing[0])
        argv = self._launcher(spec.image).argv(spec)
        env = {**os.environ, **spec.env, **(self.env_for(spec) if self.env_for else {})}
        log_path = self.dir / f"{name}.log"
        try:
            with log_path.open("ab") as log:
                child = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                )
        except OSError as exc:
            raise RuntimeFailure(f"starting {name} on node {self.node_name}: {exc}") from exc
        self._children[child.pid] = child
        record = {
            "name": name,
            "pid": child.pid,
            "proc_start": _process_start_time(child.pid),
            "argv": argv,
            "image": spec.image,
            "labels": managed_labels(spec),
            "status": "running",
            "exit_code": None,
            "started_at": time.time(),
            "log": log_path.name,
        }
        self._write(record)
        return self._state(record)

    def _terminate(self, record: dict[str, Any], timeout_s: float) -> None:
        """SIGTERM the process group, wait up to ``timeout_s``, then SIGKILL it."""
        pid = record["pid"]
        for signum, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, _KILL_WAIT_S)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signum)
            deadline = time.monotonic() + wait_s
            while self._refresh(record)["status"] == "running" and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if record["status"] != "running":
                return
        raise RuntimeFailure(f"stopping {record['name']} on node {self.node_name}: pid {pid} survived SIGKILL")

    def stop(self, instance_id: str, timeout_s: int, generation: int | None = None) -> None:
        for record in self._matching(instance_id, generation):
            if record["status"] == "running":
                self._terminate(record, timeout_s)

    def stop_all(self, timeout_s: float = 10.0) -> int:
        """Stop every process of this node; for shutting a demo fleet down. Returns how many ran."""
        running = [record for record in map(self._refresh, self._records()) if record["status"] == "running"]
        for record in running:
            self._terminate(record, timeout_s)
        return len(running)

    def remove(self, instance_id: str, generation: int | None = None) -> None:
        """Forget stopped processes of the instance; refuses a running one (stop it first)."""
        for record in self._matching(instance_id, generation):
            if record["status"] == "running":
                raise RuntimeFailure(
                    f"removing {record['name']} on node {self.node_name}: it is running; stop it first"
                )
            self._record_path(record["name"]).unlink(missing_ok=True)
            (self.dir / record["log"]).unlink(missing_ok=True)

    def logs_tail(self, instance_id: str, lines: int = 100, generation: int | None = None) -> str:
        records = self._matching(instance_id, generation)
        if not records:
            raise RuntimeFailure(f"reading logs of {instance_id} on node {self.node_name}: no such process")
        newest = max(records, key=lambda r: int(r["labels"].get(GENERATION_LABEL, "-1") or -1))
        try:
            text = (self.dir / newest["log"]).read_text(errors="replace")
        except OSError as exc:
            raise RuntimeFailure(f"reading logs of {instance_id} on node {self.node_name}: {exc}") from exc
        return "\n".join(text.splitlines()[-lines:])
