"""The ``hotrefresh`` console script. Each command lives beside the code it drives and
imports its heavy dependencies (torch, FAISS) only when it runs, so ``--help`` is instant."""

from __future__ import annotations

import typer

app = typer.Typer(help="hotrefresh: hot-refresh model upgrades for image retrieval.", no_args_is_help=True)

from cli import serve as _service_commands  # noqa: E402 - registered after the app exists

app.command("serve")(_service_commands.serve)
app.command("ingest")(_service_commands.ingest)

from cli import worker as _worker_commands  # noqa: E402

app.command("worker")(_worker_commands.worker)
app.add_typer(_worker_commands.upgrade_app, name="upgrade")

from cli import demo as _demo  # noqa: E402

app.command("demo")(_demo.demo)

from cli import models as _models_cli  # noqa: E402

app.command("train")(_models_cli.train)
app.command("experiment")(_models_cli.experiment)
app.command("evaluate")(_models_cli.evaluate)
