"""What a server process does once the app is loaded, before it serves (``asgi.py``, ``wsgi.py``)."""

import gc

from django.urls import get_resolver


def loaded_app_freeze() -> None:
    """Load every view now and keep what the loaded app holds out of the garbage collector's walks.

    A server keeps the objects of its imports (Django, the apps, Plotly, the URL conf: some
    hundred thousand) for its whole life, yet every full collection, which a large page's
    allocations set off every few requests, would walk them all again: about 100 ms of CPU
    in the middle of a request. ``gc.freeze`` moves them to a generation no collection
    walks; a full collection then walks only what was made since. The views are imported
    first (with the URL conf) so that their modules are among the frozen rather than loaded
    by the first request, and a collection first frees the loading's garbage, which would
    otherwise be kept for good.
    """
    get_resolver().url_patterns  # noqa: B018 (imports the URL conf and every view it names)
    gc.collect()
    gc.freeze()
