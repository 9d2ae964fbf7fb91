"""``hotrefresh upgrade ...``: the operator's client for ``/upgrade`` and ``/upgrades`` (the
history), with a live progress display."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from cli import choices
from cli.choices import ChoicesCommand
from cli.client import ApiOpt, JsonOpt, TokenOpt, call, emit

upgrade_app = typer.Typer(
    help="Start, list, watch and control hot-refresh upgrades through the HTTP API.", no_args_is_help=True
)


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


def _fmt_throttle(u: dict) -> str:
    limit, recent = u.get("items_per_second"), u.get("recent_items_per_s")
    if limit is None:
        return "unlimited"
    return f"{limit:g} items/s" + ("" if recent is None else f", {recent:.1f} in the last 5 s")


def _positive_rate(rate: float) -> float:
    if not rate > 0 or rate == float("inf"):
        raise typer.BadParameter(f"the rate must be a finite number of items per second above 0, got {rate}")
    return rate


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
        ("items/s", ("-" if rate is None else f"{rate:.1f}") + f"  (throttle {_fmt_throttle(u)})"),
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


def _json_lines(api: str | None, token: str | None, upgrade_id: int | None, interval: float) -> dict:
    """``watch --json``: the view once per poll, one JSON document a line, until it stops running."""
    u = call(api, token, "GET", f"/upgrade/{upgrade_id}" if upgrade_id is not None else "/upgrade")
    while True:
        typer.echo(json.dumps(u))
        if u["state"] not in ("scoring", "running"):
            return u
        time.sleep(interval)
        u = call(api, token, "GET", f"/upgrade/{u['id']}")


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


@upgrade_app.command("start", cls=ChoicesCommand)
def start(
    model: Annotated[str, typer.Argument(help="Registered model to upgrade the gallery to.")],
    strategy: Annotated[
        str | None,
        typer.Option(
            parser=choices.strategy,
            help="Backfill order: {strategies} (default: the plan's, as POST /upgrade decides).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1, max=4096, help="Items per leased batch (default: HOTREFRESH_BATCH_SIZE).", show_default=False
        ),
    ] = None,
    nfr_guardrail: Annotated[
        float | None,
        typer.Option(
            min=0.0, max=1.0, help="Pause by itself above this live NFR@1 (default: none).", show_default=False
        ),
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            parser=choices.plan,
            help="Query plan during the upgrade: {plans} (default: the server's, auto).",
            show_default=False,
        ),
    ] = None,
    nfr_target: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="auto: the probe NFR@1 a plan must stay within (default: HOTREFRESH_NFR_TARGET).",
            show_default=False,
        ),
    ] = None,
    items_per_second: Annotated[
        float | None,
        typer.Option(
            help="Throttle the backfill to this many items/s over all workers (change it live: upgrade throttle); "
            "default: unlimited",
            show_default=False,
        ),
    ] = None,
    vector_only: Annotated[
        bool,
        typer.Option(
            "--vector-only",
            help="Read no image: map every item's old vector with the map MODEL carries from its training.",
        ),
    ] = False,
    watch: Annotated[bool, typer.Option("--watch/--no-watch", help="Follow progress until it stops.")] = True,
    as_json: JsonOpt = False,
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
    if items_per_second is not None:
        body["items_per_second"] = _positive_rate(items_per_second)
    if vector_only:
        body["vector_only"] = True
    u = call(api, token, "POST", "/upgrade", json=body)
    if as_json:
        typer.echo(json.dumps(u))
        if watch:
            _json_lines(api, token, u["id"], 1.0)
        return
    typer.echo(f"upgrade {u['id']} started ({u['state']}, {u['total']} items)")
    if watch:
        watch_upgrade(api, token, u["id"], 1.0)


@upgrade_app.command("list", cls=ChoicesCommand)
def list_cmd(
    state: Annotated[
        str | None,
        typer.Option(parser=choices.state, help="Only upgrades in this state: {states}.", show_default=False),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, help="Upgrades per page.")] = 20,
    before: Annotated[
        int | None,
        typer.Option(min=1, help="Only upgrades older than this id (the next page's cursor).", show_default=False),
    ] = None,
    as_json: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """The upgrades, newest first, a page at a time (GET /upgrades)."""
    params: dict[str, Any] = {"limit": limit}
    if state is not None:
        params["state"] = state
    if before is not None:
        params["before"] = before
    emit(call(api, token, "GET", "/upgrades", params=params), as_json, _history_table)


def _history_table(page: dict) -> Any:
    from rich.table import Table

    t = Table("id", "state", "from -> to", "plan", "progress", "NFR@1", "mAP", "created", expand=False)
    for u in page["items"]:
        t.add_row(
            str(u["id"]),
            u["state"],
            f"{u['from_model']} -> {u['to_model']}",
            u["plan"],
            f"{u['done']}/{u['total']} ({_percent(u['fraction'])}) failed {u['failed']}",
            _fmt_ratio(u.get("nfr")),
            _fmt_ratio(u.get("map")),
            str(u["created_at"])[:19],
        )
    if page["next"] is not None:
        t.caption = f"older upgrades: --before {page['next']}"
    elif not page["items"]:
        t.caption = "no upgrades"
    return t


@upgrade_app.command("watch")
def watch_cmd(
    upgrade_id: Annotated[int | None, typer.Argument(help="Default: the latest upgrade.", show_default=False)] = None,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 1.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document a line, once per poll, instead of the live display.")
    ] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Live progress: fraction, items/s, ETA, live NFR and mAP, until it stops running."""
    if as_json:
        _json_lines(api, token, upgrade_id, interval)
        return
    u = watch_upgrade(api, token, upgrade_id, interval)
    typer.echo(f"upgrade {u['id']} is {u['state']}")


@upgrade_app.command("status")
def status_cmd(
    upgrade_id: Annotated[int | None, typer.Argument(help="Default: the latest upgrade.", show_default=False)] = None,
    as_json: JsonOpt = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Print one upgrade's state, progress and live metrics."""
    u = call(api, token, "GET", f"/upgrade/{upgrade_id}" if upgrade_id is not None else "/upgrade")
    emit(u, as_json, _render)


@upgrade_app.command("throttle")
def throttle_cmd(
    upgrade_id: Annotated[int, typer.Argument()],
    rate: Annotated[
        float | None, typer.Argument(help="Items per second over all workers together.", show_default=False)
    ] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="Lift the throttle.")] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Change a running backfill's rate live (RATE items/s, or --unlimited); every worker holds it
    from its next batch."""
    if (rate is None) == (not unlimited):
        raise typer.BadParameter("give either RATE or --unlimited")
    body = {"items_per_second": None if unlimited else _positive_rate(float(rate or 0))}
    u = call(api, token, "POST", f"/upgrade/{upgrade_id}/throttle", json=body)
    typer.echo(f"upgrade {upgrade_id} ({u['state']}): throttle {_fmt_throttle(u)}")


def _action(name: str, doc: str) -> None:
    def command(
        upgrade_id: Annotated[int, typer.Argument(min=1)],
        as_json: JsonOpt = False,
        api: ApiOpt = None,
        token: TokenOpt = None,
    ) -> None:
        u = call(api, token, "POST", f"/upgrade/{upgrade_id}/{name}")
        emit(u, as_json, lambda u: f"upgrade {upgrade_id}: {u['state']}")

    command.__doc__ = doc
    upgrade_app.command(name)(command)


_action("pause", "Stop leasing new batches (in-flight batches finish).")
_action("resume", "Continue a paused upgrade.")
_action("cancel", "Abandon an unfinished upgrade: every item back on the old model, instantly.")
_action("rollback", "Return every item and queries to the old model, instantly (old vectors are kept).")
_action("commit", "Retire the old model: delete its vectors (needs a completed upgrade).")
# Commands that change a running upgrade's settings (``upgrade throttle``, issue 27 item 1) are
# registered below this line, each an ``@upgrade_app.command`` of its own.
