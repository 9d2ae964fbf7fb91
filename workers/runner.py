"""Running the Celery worker: metrics endpoint, per-process set-up through Celery's signals, and
the watchdog thread in the main process."""

from __future__ import annotations

import logging
import os
import sys

from celery import signals

from service.dispatch import queue_name
from service.settings import Settings, get_settings
from workers.celery_app import get_app

log = logging.getLogger("hotrefresh.worker")

GIL_SWITCH_INTERVAL_S = 0.0005


def _threads_per_child(settings: Settings, concurrency: int) -> int:
    """Torch threads of each pool process: HOTREFRESH_TORCH_THREADS, else the cores shared out."""
    if settings.torch_threads:
        return settings.torch_threads
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


def run_worker(*, concurrency: int, metrics_port: int, hostname: str | None, loglevel: str) -> None:
    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_settings()
    app = get_app(settings)
    import workers.tasks  # noqa: F401 - registers the tasks with the app
    from service import metrics as m
    from workers.watchdog import Watchdog

    if metrics_port:
        from prometheus_client import start_http_server

        # every pool process of this worker, less the series of upgrades that ended
        start_http_server(metrics_port, addr="0.0.0.0", registry=m.collector_registry())
        log.info(
            "worker metrics on :%d/metrics (PROMETHEUS_MULTIPROC_DIR=%s)",
            metrics_port,
            os.environ.get("PROMETHEUS_MULTIPROC_DIR"),
        )

    threads = _threads_per_child(settings, concurrency)

    @signals.worker_process_init.connect(weak=False)
    def _child_init(**_: object) -> None:
        from models.runtime import start_interop_pool

        # The pool's children share the cores, not oversubscribe; the inter-op thread that runs
        # the backfill's encodings is started here, by this main thread, so it keeps its priority.
        start_interop_pool(threads)
        # The backfill's loader and writer threads run Python beside the encoder thread. The
        # encoder's forward is a traced graph that runs without the GIL, but it still takes the
        # GIL around each batch; with the default 5 ms switch interval it can wait that long for
        # it each time (benchmark B1). A shorter interval hands it back sooner.
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(pid: int | None = None, **_: object) -> None:
        m.mark_process_dead(pid or os.getpid())

    watchdog = Watchdog(settings)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_: object) -> None:
        watchdog.start()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: object) -> None:
        watchdog.stop()

    # Ask NVML, not the CUDA driver, whether a GPU exists: initialising CUDA in this parent
    # would break it in the forked pool children.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    device = "cuda" if settings.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
    log.info("hotrefresh worker: %d processes, encoders on %s, queue %s", concurrency, device, queue_name(settings))
    argv = [
        "worker",
        f"--concurrency={concurrency}",
        "--pool=prefork",
        f"--queues={queue_name(settings)}",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ]
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)
