{% autoescape off %}#!/bin/sh
# Install the GPU fleet agent from the panel at {{ panel }}; everything comes from the panel.
#   curl -fsSL {{ panel }}/agent/install.sh | sudo sh -s -- --join-token TOKEN
# The panel's gateway reaches this host's servers at the address the panel sees it at; where
# that is not one other hosts reach (NAT, a proxy), add --advertise-address ADDRESS.
set -eu

PANEL="{{ panel }}"
PREFIX=/opt/gpufleet-agent
STATE_DIR=/var/lib/gpufleet-agent
JOIN_TOKEN=""
NAME=""
ADVERTISE=""
PYTHON=python3
SYSTEMD=1
VENV_FLAGS=""

while [ $# -gt 0 ]; do
  case "$1" in
    --join-token) JOIN_TOKEN="$2"; shift 2 ;;
    --name) NAME="$2"; shift 2 ;;
    --advertise-address) ADVERTISE="$2"; shift 2 ;;
    --prefix) PREFIX="$2"; shift 2 ;;
    --state-dir) STATE_DIR="$2"; shift 2 ;;
    --python) PYTHON="$2"; shift 2 ;;
    --system-site-packages) VENV_FLAGS="--system-site-packages"; shift ;;
    --no-systemd) SYSTEMD=0; shift ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

{% if missing %}echo "gpufleet-agent: the panel at $PANEL has no wheels for {{ missing|join:', ' }}, so nothing was installed." >&2
echo "gpufleet-agent: on the panel's machine run '{{ fill }}' (it needs PyPI), then run this again." >&2
exit 1
{% endif %}fetch() { if command -v curl >/dev/null; then curl -fsSL -o "$2" "$1"; else wget -qO "$2" "$1"; fi; }
if command -v sha256sum >/dev/null; then SHA256="sha256sum"; else SHA256="shasum -a 256"; fi

# Everything is downloaded and checked against the checksums the panel wrote into this
# script before anything is installed.
echo "gpufleet-agent: downloading from $PANEL"
DOWNLOADS=$(mktemp -d)
trap 'rm -rf "$DOWNLOADS"' EXIT
mkdir "$DOWNLOADS/wheels"
fetch "$PANEL/agent/gpufleet-agent.tar.gz" "$DOWNLOADS/gpufleet-agent.tar.gz"
{% for wheel in wheels %}fetch "$PANEL/agent/wheels/{{ wheel.name }}" "$DOWNLOADS/wheels/{{ wheel.name }}"
{% endfor %}cat > "$DOWNLOADS/SHA256SUMS" <<'SUMS'
{{ tarball_sha256 }}  gpufleet-agent.tar.gz
{% for wheel in wheels %}{{ wheel.sha256 }}  wheels/{{ wheel.name }}
{% endfor %}SUMS
if ! CHECKED=$(cd "$DOWNLOADS" && $SHA256 -c SHA256SUMS 2>&1); then
  echo "$CHECKED" | grep -v ': OK$' >&2
  echo "gpufleet-agent: a download from $PANEL does not match the checksum the panel's script gave, so nothing was installed." >&2
  exit 1
fi

echo "gpufleet-agent: installing into $PREFIX from $PANEL"
mkdir -p "$PREFIX" "$STATE_DIR"
chmod 700 "$STATE_DIR"
tar -xzf "$DOWNLOADS/gpufleet-agent.tar.gz" -C "$PREFIX"
"$PYTHON" -m venv $VENV_FLAGS "$PREFIX/venv"
"$PREFIX/venv/bin/python" -m pip install --quiet --no-index --find-links "$DOWNLOADS/wheels/" \
  -r "$PREFIX/agents/requirements.txt"

# The join token goes in a file of its own, which the agent deletes once it has registered:
# a join token may admit more hosts, so none is left behind on this one.
ENV_FILE="$PREFIX/agent.env"
umask 077
[ -n "$JOIN_TOKEN" ] && printf '%s\n' "$JOIN_TOKEN" > "$STATE_DIR/join-token"
{
  echo "GPUFLEET_PANEL=$PANEL"
  echo "GPUFLEET_STATE_DIR=$STATE_DIR"
  [ -n "$NAME" ] && echo "GPUFLEET_NODE_NAME=$NAME"
  [ -n "$ADVERTISE" ] && echo "GPUFLEET_ADVERTISE_ADDRESS=$ADVERTISE"
  [ -n "$JOIN_TOKEN" ] && echo "GPUFLEET_JOIN_TOKEN_FILE=$STATE_DIR/join-token"
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
