"""The simulator's optional compiled build (issue #20): the engine and the event loop through mypyc.

``make sim-compiled`` (``python -m fleet.sim.compiled``) compiles ``COMPILED`` with mypyc, the
compiler mypy ships, into extension modules beside their sources, which Python then imports in
their place; ``make sim-pure`` removes them. Why: a comparison spends its time in a few lines of
arithmetic per request in those two modules, and compiled they run about twice as fast (a week of
traffic is six million requests). The same source either way: the compiled code does the same
float operations in the same order on C doubles, which is what Python's floats are, and the build
turns off fused multiply-add contraction (``-ffp-contract=off``), so every time is the same float
and a seeded comparison gives the same report. Without the build (production, CI, ``make
.venv/.dev``) the modules run as plain Python; nothing needs mypy at run time.

A compiled module whose source changed after it was built would run the old code: each compiled
module checks at import (``compiled_fresh``) and refuses to load if its source is newer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[2]
# The modules compiled, as paths from the repository root (mypyc's arguments).
COMPILED = ("fleet/sim/engine.py", "fleet/sim/simulate.py")
# mypyc's shared library for the group, ``<group>__mypyc`` at the repository root (a top-level name: mypyc
# sets a compiled module's ``__file__`` from the library's place as the root of the package tree).
GROUP = "fleet_sim"
BUILD_DIR = ROOT / "var" / "mypyc"

if TYPE_CHECKING:
    from mypy_extensions import mypyc_attr
else:
    try:
        from mypy_extensions import mypyc_attr
    except ImportError:  # no mypy installed: the modules run as plain Python, where the options mean nothing

        def mypyc_attr(*_args, **_kwargs):
            return lambda cls: cls


def compiled_fresh(module_file: str) -> None:
    """Raise ImportError where ``module_file`` (a module's ``__file__``) is a compiled module older than
    its source: it would run the code as it stood when built. A plain ``.py`` passes at once."""
    if module_file.endswith(".py"):
        return
    compiled = Path(module_file)
    source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
    if source.exists() and source.stat().st_mtime > compiled.stat().st_mtime:
        raise ImportError(
            f"{source} changed after it was compiled ({compiled.name}): run `make sim-compiled` again, "
            "or `make sim-pure` to run it as plain Python"
        )


def compiled_modules() -> dict[str, bool]:
    """Each of ``COMPILED`` as a module name, and whether it was imported compiled (True) or as plain
    Python; imports them."""
    import importlib

    out = {}
    for path in COMPILED:
        name = path.removesuffix(".py").replace("/", ".")
        out[name] = not str(importlib.import_module(name).__file__).endswith(".py")
    return out


def compiled_build() -> None:
    """Compile ``COMPILED`` in place (run from anywhere; needs mypy, setuptools and a C compiler: the
    dev requirements). The C sources, objects and copies go to ``var/mypyc``."""
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    os.chdir(ROOT)
    # A build older than its source refuses to import, and mypy's Django plugin imports the project as it
    # starts: the build runs on the plain sources. So does one that fails.
    compiled_remove()
    # Python's floats are C doubles computed one operation at a time; no contraction keeps them so.
    os.environ["CFLAGS"] = f"{os.environ.get('CFLAGS', '')} -ffp-contract=off".strip()
    # The project's mypy overrides name modules outside this build, which mypy would call unused.
    extensions = mypycify(
        ["--no-warn-unused-configs", *COMPILED],
        opt_level="3",
        group_name=GROUP,
        target_dir=str(BUILD_DIR / "c"),
    )
    setup(
        name="fleet-sim-compiled",
        packages=[],
        py_modules=[],
        ext_modules=extensions,
        script_args=[
            "--quiet",
            "build_ext",
            "--inplace",
            f"--build-temp={BUILD_DIR / 'temp'}",
            f"--build-lib={BUILD_DIR / 'lib'}",
        ],
    )
    # A module whose own C did not change is copied from the last build with that build's time, older than
    # the source just compiled into the group's library: it is built now.
    for path in compiled_files():
        os.utime(path)


def compiled_files() -> list[Path]:
    """The compiled build's files in place: each of ``COMPILED``'s extension modules and the group's library."""
    modules = [path for name in COMPILED for path in ROOT.glob(name.removesuffix(".py") + ".*.so")]
    return [*modules, *ROOT.glob(f"{GROUP}__mypyc.*.so")]


def compiled_remove() -> None:
    """Remove the compiled build, so the modules run as plain Python (``make sim-pure``)."""
    for path in compiled_files():
        path.unlink()


if __name__ == "__main__":
    compiled_build()
