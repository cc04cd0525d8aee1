"""The recorder CLI: it always leaves a JSON document, and what it records replays."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agents.nvml import convert
from agents.record_nvml import EXIT_LOAD_FAILED, EXIT_NO_NVML, EXIT_OK, main
from tests.agents.fake_nvml import FakeNvml, raises
from tests.agents.recordings import check_document


def only_document(out: Path) -> dict[str, Any]:
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_without_nvml_the_reason_is_recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", raises(pynvml.NVMLError_LibraryNotFound))
    assert main(["--out", str(tmp_path), "--label", "idle"]) == EXIT_NO_NVML
    doc = only_document(tmp_path)
    assert doc["available"] is False
    assert "LibraryNotFound" in doc["unavailable_reason"]
    assert doc["raw"] is None and doc["samples"] == []


def test_idle_recording_replays_through_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    FakeNvml().install(monkeypatch)
    argv = ["--out", str(tmp_path), "--label", "idle", "--seconds", "0.3", "--interval", "0.1"]
    assert main([*argv, "--read5-iterations", "50"]) == EXIT_OK
    (path,) = tmp_path.glob("*.json")
    assert path.name.startswith("nvml-nvidia-h100-80gb-hbm3-idle-")
    doc = json.loads(path.read_text())
    assert doc["available"] is True
    assert doc["read5_iterations"] == 50 and doc["read5_ms"] > 0 and doc["read5_failures"] == {}
    assert len(doc["samples"]) >= 2
    assert json.loads(json.dumps(dataclasses.asdict(convert(doc["raw"])))) == doc["reading"]
    check_document(doc)


def test_failed_load_is_recorded_without_samples(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fake GPU's UUID exists nowhere, so the load child fails (no torch, or no such GPU)."""
    FakeNvml().install(monkeypatch)
    argv = ["--out", str(tmp_path), "--label", "load", "--seconds", "0.2", "--read5-iterations", "5"]
    assert main(argv) == EXIT_LOAD_FAILED
    doc = only_document(tmp_path)
    assert doc["load"]["gpu"] == 0
    assert doc["load"]["error"]
    assert doc["samples"] == []
    assert doc["raw"] is not None


def test_load_on_a_missing_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    FakeNvml().install(monkeypatch, nvmlDeviceGetHandleByIndex=raises(pynvml.NVMLError_InvalidArgument))
    assert main(["--out", str(tmp_path), "--label", "load", "--load-gpu", "5"]) == EXIT_LOAD_FAILED
    assert "GPU 5 not usable" in only_document(tmp_path)["load"]["error"]
