"""``hotrefresh upgrade ...``: the operator's client for ``/upgrade``, with a live progress display."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cli.client import ApiOpt, TokenOpt, call

upgrade_app = typer.Typer(help="Start and control hot-refresh upgrades through the HTTP API.", no_args_is_help=True)


def _fmt_ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _percent(fraction: float | None) -> str:
    return "scoring" if fraction is None else f"{100 * fraction:.1f}%"


def _fmt_plan(u: dict) -> str:
    """The plan asked for, the one served now, and (auto) each candidate's last probe NFR/mAP."""
    serving = (u.get("serving_plan") or {}).get("name")
    last = (u.get("checkpoints") or [{}])[-1]
    text = str(u.get("plan")) + (f" → serving {serving}" if serving and serving != u.get("plan") else "")
    cands = last.get("candidates") or {}
    if cands:
        text += (
            "  ("
            + ", ".join(f"{p} {_fmt_ratio(c.get('nfr'))}/{_fmt_ratio(c.get('map'))}" for p, c in cands.items())
            + " NFR/mAP)"
        )
    return text


def _render(u: dict) -> Any:
    from rich.table import Table

    t = Table(
        title=f"upgrade {u['id']}: {u['from_model']} -> {u['to_model']} ({u['strategy']})",
        show_header=False,
        expand=False,
    )
    rate = u.get("items_per_s")
    eta = u.get("eta_s")
    rows = [
        ("state", u["state"]),
        ("progress", f"{u['done']}/{u['total']}  ({_percent(u['fraction'])})  failed {u['failed']}"),
        ("mapped", str(u.get("mapped", 0))),
        ("items/s", "-" if rate is None else f"{rate:.1f}"),
        ("ETA", "-" if eta is None else f"{eta:.0f} s"),
        ("plan", _fmt_plan(u)),
        ("live NFR@1", _fmt_ratio(u.get("nfr"))),
        ("live mAP", _fmt_ratio(u.get("map"))),
        ("queue / leased", f"{u.get('queue_depth')} / {u.get('leased')}"),
    ]
    if u.get("error"):
        rows.append(("note", u["error"]))
    for k, v in rows:
        t.add_row(k, str(v))
    return t


def watch_upgrade(api: str | None, token: str | None, upgrade_id: int | None, interval: float) -> dict:
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, Progress, TextColumn

    bar = Progress(TextColumn("backfill"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    task = bar.add_task("backfill", total=1.0)
    path = f"/upgrade/{upgrade_id}" if upgrade_id is not None else "/upgrade"
    u = call(api, token, "GET", path)
    with Live(Group(bar, _render(u)), refresh_per_second=4) as live:
        while True:
            bar.update(task, completed=u["fraction"] or 0.0)
            live.update(Group(bar, _render(u)))
            if u["state"] not in ("scoring", "running"):
                return u
            time.sleep(interval)
            u = call(api, token, "GET", f"/upgrade/{u['id']}")


@upgrade_app.command("start")
def start(
    model: Annotated[str, typer.Argument(help="Registered model to upgrade the gallery to.")],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="Backfill order, one the server registers (models/uncertainty.py; the API schema lists them); "
            "default: the plan's (POST /upgrade)",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=4096)] = None,
    nfr_guardrail: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="Pause above this live NFR.")] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            help="Query plan, one the server registers (models/plans/; the API schema lists them) or the chooser; "
            "default: the server's (the chooser)",
            show_default=False,
        ),
    ] = None,
    nfr_target: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="auto: the probe NFR to stay within.")
    ] = None,
    vector_only: Annotated[
        bool,
        typer.Option(
            "--vector-only",
            help="Read no image: map every item's old vector with the map MODEL carries from its training.",
        ),
    ] = False,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow progress until it stops.")] = True,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Start a hot refresh: queries switch to MODEL at once, workers backfill the gallery."""
    body: dict[str, Any] = {"model": model}
    if strategy is not None:
        body["strategy"] = strategy
    if batch_size is not None:
        body["batch_size"] = batch_size
    if nfr_guardrail is not None:
        body["nfr_guardrail"] = nfr_guardrail
    if plan is not None:
        body["plan"] = plan
    if nfr_target is not None:
        body["nfr_target"] = nfr_target
    if vector_only:
        body["vector_only"] = True
    u = call(api, token, "POST", "/upgrade", json=body)
    typer.echo(f"upgrade {u['id']} started ({u['state']}, {u['total']} items)")
    if watch:
        watch_upgrade(api, token, u["id"], 1.0)


@upgrade_app.command("watch")
def watch_cmd(
    upgrade_id: Annotated[int | None, typer.Argument(help="Default: the latest upgrade.")] = None,
    interval: Annotated[float, typer.Option(min=0.1)] = 1.0,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Live progress: fraction, items/s, ETA, live NFR and mAP, until it stops running."""
    u = watch_upgrade(api, token, upgrade_id, interval)
    typer.echo(f"upgrade {u['id']} is {u['state']}")


@upgrade_app.command("status")
def status_cmd(
    upgrade_id: Annotated[int | None, typer.Argument(help="Default: the latest upgrade.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print one upgrade's state, progress and live metrics."""
    u = call(api, token, "GET", f"/upgrade/{upgrade_id}" if upgrade_id is not None else "/upgrade")
    if as_json:
        import json

        typer.echo(json.dumps(u, indent=2))
        return
    from rich.console import Console

    Console().print(_render(u))


def _action(name: str, doc: str) -> None:
    def command(
        upgrade_id: Annotated[int, typer.Argument()],
        api: ApiOpt = None,
        token: TokenOpt = None,
    ) -> None:
        u = call(api, token, "POST", f"/upgrade/{upgrade_id}/{name}")
        typer.echo(f"upgrade {upgrade_id}: {u['state']}")

    command.__doc__ = doc
    upgrade_app.command(name)(command)


_action("pause", "Stop leasing new batches (in-flight batches finish).")
_action("resume", "Continue a paused upgrade.")
_action("cancel", "Abandon an unfinished upgrade: every item back on the old model, instantly.")
_action("rollback", "Return every item and queries to the old model, instantly (old vectors are kept).")
_action("commit", "Retire the old model: delete its vectors (needs a completed upgrade).")
