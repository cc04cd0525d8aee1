#!/usr/bin/env bash
# Make a local Docker engine available for the agent tests, idempotently.
#
# Why: tests/agents/test_runtime.py drives a real dockerd (not a mock), and CI
# runs on a bare machine as root with no registry reachable. This script installs
# Debian's docker.io (plus busybox-static, whose static binary becomes the
# locally imported test image) when missing, starts dockerd without iptables or
# the default bridge (test containers use host networking on 127.0.0.1 only),
# and waits a bounded time for the API socket. Running it again is a no-op.
set -euo pipefail

LOG_FILE="${DOCKERD_LOG:-${TMPDIR:-/tmp}/gpufleet-dockerd.log}"
WAIT_S="${DOCKERD_WAIT_S:-60}"

say() { echo "[start-docker] $*"; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
# The test image needs a statically linked busybox (docker import of one file).
if ! { [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1; }; then
    missing+=(busybox-static)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        say "missing packages (${missing[*]}) and not root: install them first" >&2
        exit 1
    fi
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "packages already present (dockerd, static busybox)"
fi

if docker info >/dev/null 2>&1; then
    say "docker engine already running"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "docker engine not reachable and not root: cannot start dockerd" >&2
    exit 1
fi

say "starting dockerd (log: $LOG_FILE)"
# setsid detaches dockerd from this script's session so it outlives the caller.
setsid dockerd --iptables=false --bridge=none >>"$LOG_FILE" 2>&1 </dev/null &

start=$SECONDS
until docker info >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$WAIT_S" ]; then
        say "dockerd not ready after ${WAIT_S}s; last log lines:" >&2
        tail -n 30 "$LOG_FILE" >&2 || true
        exit 1
    fi
    sleep 0.5
done
say "docker engine ready after $((SECONDS - start))s ($(docker info --format '{{.ServerVersion}} storage={{.Driver}}'))"
