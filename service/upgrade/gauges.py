"""An upgrade's gauges end with it, in every process that set them.

The process that ends an upgrade drops its own series at once (``service.metrics.remove_upgrade``,
called by completion and by ``service.upgrade.control``), and a drain that finds its upgrade ended
drops those of its process. That still leaves series set by a process that never looks at the
upgrade again: a pool process that was idle when an operator rolled back through the API, or an
API process that set one. :func:`drop_ended` is the sweep for those, run by every worker's
watchdog each tick and by an API process before each scrape of its ``/metrics``: it reads which
upgrades this process's metrics (its container's directory in multiprocess mode) still show and
drops those SQL says have ended.
"""

from __future__ import annotations

from service import metrics
from service.db.session import read_scope
from service.repositories import upgrades
from service.states import BACKFILL_OVER


def drop_ended(url: str) -> list[str]:
    """Remove the gauge series of every upgrade that has ended (or does not exist); returns their
    labels. The series are read before SQL, so an upgrade whose first gauge appears meanwhile is
    judged on the next call, never dropped for not having been read."""
    labelled = metrics.upgrades_with_series()
    if not labelled:
        return []
    ended = []
    with read_scope(url) as s:
        for label in sorted(labelled):
            up = upgrades.get_upgrade(s, int(label)) if label.isdigit() else None
            if up is None or up.state in BACKFILL_OVER:
                ended.append(label)
    for label in ended:
        metrics.remove_upgrade(label)
    return ended
