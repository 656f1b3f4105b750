"""A live web dashboard of a study's run manifest (``boldcloud dashboard``).

The manifest records (``manifest/tasks/<stage>/<unit>.json``) are the only source: the dashboard
never talks to the cluster to learn what ran. :mod:`infra.dashboard.cache` keeps the records in
memory and re-reads only those that changed; :mod:`infra.dashboard.views` aggregates them
(overview grid, progress, ETA, throughput) and is shared with ``boldcloud status``;
:mod:`infra.dashboard.pages` gathers what the detail pages show from the store;
:mod:`infra.dashboard.app` is the Starlette application served by uvicorn.

This package imports no web framework at import time, so ``boldcloud status`` stays light.
"""

from infra.dashboard.cache import ManifestCache, Task
from infra.dashboard.views import overview

__all__ = ["ManifestCache", "Task", "overview"]
