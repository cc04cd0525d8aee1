"""What a host lets run on it, whatever the panel asks: the agent's own last word.

The panel describes an instance (image, vLLM flags, environment, bind mounts); a
compromised panel, or a staff user who may only edit model profiles, must not be able to
make a host mount its root filesystem or Docker socket, share the host's IPC namespace,
or start vLLM with flags that load code or files of their choosing. So the host's own
configuration holds an allowlist for each, default-deny:

* **Bind mounts:** only under the host paths the host names (``--allow-volume``; none by
  default), read-only, never ``/``, the Docker or containerd socket, or the system's own
  directories, also when a symlink leads there.
* **Environment variables:** names matching the host's patterns (by default the ones
  vLLM, Hugging Face and PyTorch read); never the loader's or Python's (``LD_*``,
  ``PYTHON*``), which run code.
* **vLLM flags:** names normalised the way vLLM's ``FlexibleArgumentParser`` reads them
  (underscores to dashes up to the first dot, ``--flag.key`` meaning ``--flag``, ``=``
  values split off) and then matched exactly, so an abbreviation argparse would accept
  (``--trust-remote``) or a short form (``-O3``) does not slip past; ``--config`` (a
  file of more flags) is never allowed.
* **Host IPC** only where the host's configuration allows it; otherwise the container
  gets its own ``/dev/shm`` of ``shm_size``.

Nothing here imports Django or the panel: it runs on GPU hosts.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Flags the agent lets a profile add (it sets --model, --host, --port and the profile's
# own fields itself). Each is read by vLLM as configuration only: no paths, no code.
VLLM_FLAGS = frozenset(
    {
        "--max-num-batched-tokens",
        "--enforce-eager",
        "--seed",
        "--tensor-parallel-size",
        "--pipeline-parallel-size",
        "--data-parallel-size",
        "--block-size",
        "--swap-space",
        "--cpu-offload-gb",
        "--enable-chunked-prefill",
        "--no-enable-chunked-prefill",
        "--max-num-partial-prefills",
        "--max-long-partial-prefills",
        "--long-prefill-token-threshold",
        "--scheduling-policy",
        "--max-logprobs",
        "--disable-log-requests",
        "--enable-log-requests",
        "--uvicorn-log-level",
        "--tokenizer-mode",
        "--revision",
        "--tokenizer-revision",
        "--load-format",
        "--max-seq-len-to-capture",
        "--compilation-config",
        "--kv-cache-memory-bytes",
        "--num-gpu-blocks-override",
        "--enable-expert-parallel",
        "--reasoning-parser",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
    }
)
ENV_PATTERNS = ("VLLM_*", "HF_*", "HUGGING_FACE_*", "TRANSFORMERS_*", "TOKENIZERS_*", "NCCL_*", "PYTORCH_*", "OMP_*")
# Never, whatever a host's patterns say: each makes the process load code of the setter's choosing.
ENV_NEVER = ("LD_*", "PYTHON*", "VLLM_PLUGINS", "PATH")
# Never mounted, whatever a host allows: the root, the engine's sockets and state, the
# kernel's views. Anything else a host must name with --allow-volume.
PATHS_NEVER = (
    "/",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/run",
    "/var/run",
    "/var/lib/docker",
    "/var/lib/containerd",
)
SOCKET_NAMES = re.compile(r"(docker|containerd|podman|crio)[^/]*\.sock$")
_NEGATIVE_NUMBER = re.compile(r"^-\d")


class Refused(ValueError):
    """The host's configuration does not allow what the panel asked for; the message says what."""


def vllm_flag_name(token: str) -> str:
    """The flag vLLM's parser reads from ``token``: ``--max_num_seqs=4`` -> ``--max-num-seqs``,
    ``--compilation_config.level`` -> ``--compilation-config``."""
    key = token.split("=", 1)[0]
    return "--" + key[2:].split(".", 1)[0].replace("_", "-")


@dataclass(frozen=True)
class HostPolicy:
    """One host's allowlists; the defaults are what a host with no configuration allows."""

    volume_prefixes: tuple[str, ...] = ()
    env_patterns: tuple[str, ...] = ENV_PATTERNS
    vllm_flags: frozenset[str] = VLLM_FLAGS
    host_ipc: bool = False
    shm_size: str = "8g"

    def check_flags(self, args: Sequence[str]) -> None:
        """Refuse any token vLLM would read as a flag that is not in the allowlist."""
        for token in args:
            if not token.startswith("-") or _NEGATIVE_NUMBER.match(token):
                continue  # a value
            if not token.startswith("--"):
                raise Refused(f"vLLM flag {token!r} refused: short flags are not allowed on this host")
            name = vllm_flag_name(token)
            if name not in self.vllm_flags:
                raise Refused(f"vLLM flag {name} refused: not in this host's allowed flags (--allow-vllm-flag)")

    def check_env(self, env: Mapping[str, str]) -> None:
        for name in env:
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in ENV_NEVER):
                raise Refused(f"environment variable {name} refused: it makes the server load code")
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.env_patterns):
                raise Refused(f"environment variable {name} refused: not in this host's allowed names (--allow-env)")

    def check_volumes(self, volumes: Mapping[str, object]) -> None:
        for host_path in volumes:
            self._check_path(host_path)

    def _check_path(self, host_path: str) -> None:
        if not os.path.isabs(host_path) or ".." in host_path.split("/"):
            raise Refused(f"volume {host_path!r} refused: a host path must be absolute, without '..'")
        for path in dict.fromkeys((os.path.normpath(host_path), os.path.realpath(host_path))):
            if SOCKET_NAMES.search(path) or any(_within(path, never, exact=never == "/") for never in PATHS_NEVER):
                raise Refused(f"volume {host_path!r} refused: {path} is never mounted into a server")
            if not any(_within(path, prefix) for prefix in self.volume_prefixes):
                raise Refused(f"volume {host_path!r} refused: not under a host path this host allows (--allow-volume)")

    def check(self, *, args: Sequence[str], env: Mapping[str, str], volumes: Mapping[str, object]) -> None:
        """Everything a desired instance asks of the host, refused at the first thing not allowed."""
        self.check_flags(args)
        self.check_env(env)
        self.check_volumes(volumes)


def _within(path: str, prefix: str, *, exact: bool = False) -> bool:
    prefix = os.path.normpath(prefix)
    if exact or prefix == "/":
        return path == prefix
    return path == prefix or path.startswith(prefix + "/")
