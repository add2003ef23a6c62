"""Prometheus metrics: the daemon's health, operations and the kernel's
IPVS counters, served on [metrics] listen.

- `events`: counters kept at each event (probes, transitions, kernel
  operations, passes, reloads, control requests), cheap enough for 10,000
  probes a second.
- `collect`: at scrape time, the engine's state and the kernel's counters as
  metric families (a custom prometheus_client Collector), rendered off the
  event loop.
- `endpoint`: the endpoint (trio and h11), with a short cache of the kernel read.

docs/config.md ([metrics]) lists every metric; docs/dashboard.json and
docs/alerts.yml use them.

Only `events` is imported with this package (the engine imports it, and
`collect` and `endpoint` import the engine); `serve` imports the rest, with
prometheus_client and h11, when [metrics] listen is set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from director.metrics.events import CountedHandler, Events

if TYPE_CHECKING:
    from director.config.model import MetricsSettings
    from director.engine import Director
    from director.kernel import KernelTable

__all__ = ["CountedHandler", "Events", "serve"]


async def serve(
    settings: MetricsSettings,
    director: Director,
    reads: KernelTable,
    *,
    tried: trio.Event | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve [metrics] until cancelled (director.metrics.endpoint.serve),
    reading the kernel through `reads` (the control socket's listings'
    table: one call at a time, in its worker thread); returns at once when
    [metrics] listen is not set. `tried` is set once the first try to bind
    is logged (or at once without listen)."""
    if settings.listen is None:
        if tried is not None:
            tried.set()
        task_status.started("")
        return
    from director.metrics import endpoint

    scraper = endpoint.Scraper(director, reads)
    await endpoint.serve(settings, scraper, tried=tried, task_status=task_status)
