"""``hotrefresh serve``: migrate the database, then run the API under uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli import choices


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn processes (each a full index replica).")] = 1,
    migrate: Annotated[bool, typer.Option(help="Run `alembic upgrade head` first.")] = True,
    log_level: Annotated[
        str, typer.Option("--log-level", "-l", parser=choices.log_level, help="Log level: {log_levels}.")
    ] = "info",
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads per process for torch/FAISS (OMP_NUM_THREADS, if unset).")
    ] = 1,
) -> None:
    """Run the API: migrate the database to the newest schema, then serve with uvicorn."""
    # A search encodes one image: intra-op parallelism buys nothing there and, on a busy machine,
    # threads spinning against each other cost 20x (measured: 38 ms with 2 threads, 1.8 ms with
    # 1, for one 28x28 image). Concurrency comes from requests instead. Set before torch loads,
    # and inherited by uvicorn's worker processes.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    import uvicorn

    from service.db.migrate import upgrade_head
    from service.settings import get_settings

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if migrate:
        upgrade_head(settings.sqlalchemy_url)
    uvicorn.run("service.api.app:create_app", factory=True, host=host, port=port, workers=workers, log_level=log_level)
