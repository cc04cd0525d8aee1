"""Stopping a process a test started, whether or not it answers SIGTERM."""

from __future__ import annotations

import subprocess


def process_stop(process: subprocess.Popen[bytes] | subprocess.Popen[str], *, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``; reaped either way."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)
