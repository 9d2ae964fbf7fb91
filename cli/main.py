"""The ``hotrefresh`` console script: the one module that wires every package together. Each
command imports its heavy dependencies (torch, FAISS) only when it runs, so ``--help`` is instant.

Every command is listed, with its options and exit codes, in docs/cli.md."""

from __future__ import annotations

from typing import Annotated

import typer

from cli import demo, gallery, index, ingest, models, registry, search, serve, upgrade, worker
from cli.choices import ChoicesCommand

app = typer.Typer(help="hotrefresh: hot-refresh model upgrades for image retrieval.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"hotrefresh {version('hotrefresh')}")
        except PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("hotrefresh (not installed: no package metadata)")
        raise typer.Exit()


@app.callback()
def main(
    _version_flag: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the installed version and exit."),
    ] = False,
) -> None:
    """hotrefresh: hot-refresh model upgrades for image retrieval."""


# the service's processes
app.command("serve", cls=ChoicesCommand)(serve.serve)
app.command("worker", cls=ChoicesCommand)(worker.worker)
# clients of a running API
app.add_typer(registry.models_app, name="models")
app.add_typer(gallery.gallery_app, name="gallery")
app.command("ingest")(ingest.ingest)
app.command("search")(search.search)
app.add_typer(upgrade.upgrade_app, name="upgrade")
# operations on this machine's configuration
app.add_typer(index.index_app, name="index")
app.command("demo", cls=ChoicesCommand)(demo.demo)
# the ML, offline
app.command("train")(models.train)
app.command("export")(models.export)
app.command("experiment")(models.experiment)
app.command("evaluate")(models.evaluate)
