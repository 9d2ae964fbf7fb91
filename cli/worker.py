"""``hotrefresh worker``: a Celery worker with a Prometheus endpoint and the watchdog.

Heavy imports happen inside the command so ``hotrefresh --help`` stays instant, and so the
worker can set ``PROMETHEUS_MULTIPROC_DIR`` before prometheus-client is first imported.
"""

from __future__ import annotations

import os
import tempfile
from typing import Annotated

import typer

from cli import choices


def worker(
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Pool processes.")] = 1,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            help="Port of the worker's Prometheus /metrics (pool processes summed); 0 = off. "
            "Default: HOTREFRESH_WORKER_METRICS_PORT (9101).",
            show_default=False,
        ),
    ] = None,
    hostname: Annotated[str | None, typer.Option("--hostname", "-n", help="Celery node name.")] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", "-l", parser=choices.log_level, help="Log level: {log_levels}.")
    ] = "info",
    loglevel: Annotated[
        str | None, typer.Option("--loglevel", parser=choices.log_level, hidden=True, help="Deprecated: --log-level.")
    ] = None,
) -> None:
    """Run a Celery backfill worker (encodes on CUDA when present, else CPU)."""
    if loglevel is not None:
        typer.echo("--loglevel is deprecated; use --log-level", err=True)
        log_level = loglevel
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Multiprocess mode, so counters of all pool processes add up in one scrape.
        import atexit
        import shutil

        prom_dir = tempfile.mkdtemp(prefix="hotrefresh-worker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = prom_dir
        atexit.register(shutil.rmtree, prom_dir, True)
    from service.settings import get_settings
    from workers.runner import run_worker

    if metrics_port is None:
        metrics_port = get_settings().worker_metrics_port
    run_worker(concurrency=concurrency, metrics_port=metrics_port, hostname=hostname, loglevel=log_level.upper())
