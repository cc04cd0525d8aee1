"""The servers' entry points freeze the loaded app out of the garbage collector's full collections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Each entry point imported in a fresh interpreter, the freeze undone between the two.
PROBE = """
import gc, sys
import fleet.project.wsgi
print(gc.get_freeze_count(), "dashboard.views" in sys.modules)
gc.unfreeze()
import fleet.project.asgi
print(gc.get_freeze_count())
"""


def test_the_wsgi_and_asgi_entry_points_freeze_the_loaded_app_views_and_all() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    wsgi, asgi = done.stdout.splitlines()
    frozen, views_loaded = wsgi.split()
    # Django, the apps and the views loaded with the URL conf: tens of thousands of objects at least.
    assert int(frozen) > 50_000
    assert views_loaded == "True"
    assert int(asgi) > 50_000


# The freeze in a fresh interpreter (this one holds the whole test session): what it walked
# before, what it froze, what a full collection walks then, and what it frees of a cycle made after.
AFTER = """
import gc, django, os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleet.project.settings")
django.setup()
from fleet.project.serving import loaded_app_freeze
walked = len(gc.get_objects())
loaded_app_freeze()
cycle = []
cycle.append(cycle)
del cycle
print(walked, gc.get_freeze_count(), len(gc.get_objects()), gc.collect())
"""


def test_a_freeze_leaves_a_full_collection_only_what_came_after() -> None:
    """The loaded objects leave the generations a collection walks (``gc.get_objects``: all of them);
    what is made after is collected as ever."""
    done = subprocess.run([sys.executable, "-c", AFTER], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    walked, frozen, left, freed = (int(word) for word in done.stdout.split())
    assert frozen > walked // 2
    assert left < 1_000
    assert freed >= 1
