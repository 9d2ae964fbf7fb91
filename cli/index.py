"""``hotrefresh index rebuild``: the serving index written again from SQL, the source of truth.

For the Milvus backend (``HOTREFRESH_INDEX_BACKEND=milvus``): an empty Milvus (a new cluster, a
lost volume, collections dropped by hand) or one a stale writer left behind is made to hold
exactly what SQL says, item by item in id order, with a progress bar. Safe while the service
runs: every write is the same convergence the service's own writers make, so it can be stopped
and run again. The in-process backend needs no command: every API replica loads itself from SQL
when it starts (and from a snapshot when it has one).
"""

from __future__ import annotations

from typing import Annotated

import typer

index_app = typer.Typer(help="The serving index: rebuild it from SQL.", no_args_is_help=True)


@index_app.command("rebuild")
def rebuild(
    chunk: Annotated[int, typer.Option(min=1, max=100_000, help="items read from SQL and written per step")] = 10_000,
) -> None:
    """Write every gallery item to the Milvus backend again, from SQL."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from service.errors import ServiceError
    from service.indexport.milvus import rebuild as rebuild_from_sql
    from service.indexport.milvus import spaces_for
    from service.settings import get_settings

    settings = get_settings()
    if settings.index_backend != "milvus":
        typer.echo(
            f"HOTREFRESH_INDEX_BACKEND is {settings.index_backend!r}: API replicas of the in-process "
            "index load themselves from SQL when they start; nothing to rebuild",
            err=True,
        )
        raise typer.Exit(2)
    try:
        spaces = spaces_for(settings)
        with Progress(
            TextColumn("rebuilding Milvus from SQL"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
        ) as bar:
            task = bar.add_task("rebuild", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            n = rebuild_from_sql(settings, spaces, chunk=chunk, progress=progress)
    except ServiceError as e:
        typer.echo(f"rebuild failed: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"rebuilt {n} items into Milvus at {settings.milvus_uri} (collections {settings.milvus_prefix}_*)")
