"""The agent runs on GPU hosts without the panel's stack: nothing in agents/ imports Django."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

AGENTS = Path(__file__).resolve().parents[2] / "agents"


def imported_modules(path: Path) -> set[str]:
    """Every module an agents/ file imports, at any depth of the file (lazy imports too)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_agent_sources_never_import_django() -> None:
    sources = sorted(AGENTS.glob("*.py"))
    assert sources
    offenders = {
        path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] == "django") for path in sources
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


def test_importing_the_agent_loads_no_django() -> None:
    code = (
        "import sys, agents.nvml, agents.scrape, agents.record_nvml; "
        "loaded = [m for m in sys.modules if m.split('.')[0] == 'django']; "
        "assert not loaded, loaded"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=AGENTS.parent, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
