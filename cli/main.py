"""The ``hotrefresh`` console script: the one module that wires every package together. Each
command imports its heavy dependencies (torch, FAISS) only when it runs, so ``--help`` is instant."""

from __future__ import annotations

import typer

from cli import demo, index, ingest, models, serve, upgrade, worker

app = typer.Typer(help="hotrefresh: hot-refresh model upgrades for image retrieval.", no_args_is_help=True)

app.command("serve")(serve.serve)
app.command("ingest")(ingest.ingest)
app.command("worker")(worker.worker)
app.add_typer(upgrade.upgrade_app, name="upgrade")
app.add_typer(index.index_app, name="index")
app.command("demo")(demo.demo)
app.command("train")(models.train)
app.command("export")(models.export)
app.command("experiment")(models.experiment)
app.command("evaluate")(models.evaluate)
