{% autoescape off %}#!/bin/sh
# Install the GPU fleet agent from the panel at {{ panel }}; everything comes from the panel.
#   curl -fsSL {{ panel }}/agent/install.sh | sudo sh -s -- --join-token TOKEN
set -eu

PANEL="{{ panel }}"
PREFIX=/opt/gpufleet-agent
STATE_DIR=/var/lib/gpufleet-agent
JOIN_TOKEN=""
NAME=""
PYTHON=python3
SYSTEMD=1
VENV_FLAGS=""

while [ $# -gt 0 ]; do
  case "$1" in
    --join-token) JOIN_TOKEN="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --state-dir) STATE_DIR="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --system-site-packages) VENV_FLAGS="--system-site-packages"; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

fetch() { if command -v curl >/dev/null; then curl -fsSL "$1"; else wget -qO- "$1"; fi; }

echo "gpufleet-agent: installing into $PREFIX from $PANEL"
mkdir -p "$PREFIX" "$STATE_DIR"
chmod 700 "$STATE_DIR"
fetch "$PANEL/agent/gpufleet-agent.tar.gz" | tar -xzf - -C "$PREFIX"
"$PYTHON" -m venv $VENV_FLAGS "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --no-index --find-links "$PANEL/agent/wheels/" \
  -r "$PREFIX/agents/requirements.txt"

ENV_FILE="$PREFIX/agent.env"
umask 077
{
  echo "GPUFLEET_PANEL=$PANEL"
  echo "GPUFLEET_STATE_DIR=$STATE_DIR"
  [ -n "$NAME" ] && echo "GPUFLEET_NODE_NAME=$NAME"
  [ -n "$JOIN_TOKEN" ] && echo "GPUFLEET_JOIN_TOKEN=$JOIN_TOKEN"
} > "$ENV_FILE"
umask 022

if [ "$SYSTEMD" = 1 ]; then
  cat > /etc/systemd/system/gpufleet-agent.service <<UNIT
{{ unit }}
UNIT
  systemctl daemon-reload
  systemctl enable --now gpufleet-agent
  echo "gpufleet-agent: running; logs with: journalctl -u gpufleet-agent -f"
else
  echo "gpufleet-agent: installed; start with: env \$(cat $ENV_FILE) $PREFIX/venv/bin/python -m agents"
fi
{% endautoescape %}
