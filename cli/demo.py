"""``hotrefresh demo``: the whole system on embedded defaults, one real hot refresh.

SQLite, an embedded redis-server (unless HOTREFRESH_REDIS_URL is set), the API under
uvicorn and a real Celery worker process, all started as separate processes through
:mod:`cli.launcher`; everything else goes through the public HTTP API, exactly as an
operator would drive it. Models are trained once and cached, so a second run starts in
seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import choices

if TYPE_CHECKING:
    from service.settings import Settings


class IndexChoice(StrEnum):
    """Where the demo searches its gallery (``--index``)."""

    IN_PROCESS = "in-process"
    MILVUS = "milvus"


DEMO_TOKEN = "demo-admin-token"


# The colour demo's models, RGB at 32 x 32: an old conv2 and a new ResNet-18 layout with one block
# per stage, width 16 (measured: width 8 at 48 x 48 with the random resized crop ended six epochs
# 8 points of probe mAP below the old model).
COLOUR_OLD = {"arch": "conv2", "input_channels": 3, "input_size": (32, 32)}
COLOUR_NEW = {
    "arch": "resnet18",
    "input_channels": 3,
    "input_size": (32, 32),
    "arch_options": {"width": 16, "blocks": [1, 1, 1, 1], "stem": "small"},
}


def _train_models(cache: Path, train_size: int, epochs: int, seed: int, colour: bool = False) -> tuple[Path, Path]:
    """An old model on 30% of the training slice (the paper's expansion allocation) and a
    RACT-compatible new one on all of it; reused when already trained with the same recipe.
    Grey: conv2 then conv4 at 28 x 28. Colour (``fashion-colour``): COLOUR_OLD then COLOUR_NEW."""
    from models.data import allocate, load_dataset
    from models.train import TrainConfig, train_and_save

    tag = f"n{train_size}-e{epochs}-s{seed}"
    kind, (old_arch, new_arch) = ("colour", ("conv2", "resnet18")) if colour else ("", ("conv2", "conv4"))
    prefix = "fmnist-colour" if colour else "fmnist"
    old_path = cache / f"{prefix}-old-{old_arch}-{tag}.pt"
    new_path = cache / f"{prefix}-new-ract-{new_arch}-{tag}.pt"
    if old_path.exists() and new_path.exists():
        typer.echo(f"models: reusing {old_path.name} and {new_path.name}")
        return old_path, new_path
    cache.mkdir(parents=True, exist_ok=True)
    images, labels = load_dataset("fashion-colour" if colour else "fashion-mnist", "train")
    images, labels = images[:train_size], labels[:train_size]
    alloc = allocate("expansion", labels, seed)
    typer.echo(
        f"models: training old {old_arch} on {len(alloc.old_idx)} {kind} images, new {new_arch} (RACT) "
        f"on {len(alloc.new_idx)}"
    )
    old_kw: dict[str, Any] = COLOUR_OLD if colour else {"arch": "conv2"}
    new_kw: dict[str, Any] = COLOUR_NEW if colour else {"arch": "conv4"}
    old_cfg = TrainConfig(embedding_dim=64, epochs=epochs, seed=seed, **old_kw)
    train_and_save(images[alloc.old_idx], labels[alloc.old_idx], old_cfg, old_path, f"{prefix}-old")
    new_cfg = TrainConfig(loss="ract", embedding_dim=64, epochs=epochs, seed=seed, **new_kw)
    train_and_save(
        images[alloc.new_idx], labels[alloc.new_idx], new_cfg, new_path, f"{prefix}-new-ract", old_path=old_path
    )
    return old_path, new_path


def plot_live_curve(upgrade: dict[str, Any], path: Path) -> None:
    """The backfill curve as the service measured it live: probe mAP and NFR@1 per checkpoint of
    the plan served (solid, each point coloured by the plan served there) and, under ``auto``,
    every candidate plan measured at the same cut (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.plans import get_plan, plan_names

    def colour(name: str | None) -> str:
        return get_plan(name).colour if name in plan_names() else "tab:red"

    pts = sorted((c for c in upgrade["checkpoints"] if c.get("map") is not None), key=lambda c: c["fraction"])
    x = [100 * c["fraction"] for c in pts]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted(
        {n for c in pts for n in (c.get("candidates") or {})},
        key=lambda n: plan_names().index(n) if n in plan_names() else len(plan_names()),
    )
    for name in names:
        cx = [100 * c["fraction"] for c in pts if name in (c.get("candidates") or {})]
        cand = [c["candidates"][name] for c in pts if name in (c.get("candidates") or {})]
        style = {"linestyle": "--", "linewidth": 1, "color": colour(name), "alpha": 0.8}
        ax1.plot(
            cx,
            [100 * v["map"] if v.get("map") is not None else float("nan") for v in cand],
            **style,
            label=f"candidate: {name}",
        )
        ax2.plot(cx, [100 * v["nfr"] if v.get("nfr") is not None else float("nan") for v in cand], **style)
    served = f"{upgrade['to_model']}, served ({upgrade.get('plan')})"
    ax1.plot(x, [100 * c["map"] for c in pts], color="tab:red", linewidth=2, label=served)
    ax2.plot(
        x, [100 * c["nfr"] if c.get("nfr") is not None else float("nan") for c in pts], color="tab:red", linewidth=2
    )
    colours = [colour(c.get("plan")) for c in pts]
    ax1.scatter(x, [100 * c["map"] for c in pts], c=colours, s=18, zorder=3)
    ax2.scatter(
        x, [100 * c["nfr"] if c.get("nfr") is not None else float("nan") for c in pts], c=colours, s=18, zorder=3
    )
    base = upgrade.get("baseline") or {}
    if base.get("old_map") is not None:
        ax1.axhline(100 * base["old_map"], color="black", linewidth=1, label="old-to-old")
    ax1.set(xlabel="gallery backfilled (%)", ylabel="probe mAP (%)", title="live mAP, mixed index")
    ax2.set(xlabel="gallery backfilled (%)", ylabel="NFR@1 (%)", title="live negative-flip rate")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(
        f"hot refresh {upgrade['from_model']} -> {upgrade['to_model']}, {upgrade['strategy']} order, "
        f"plan {upgrade.get('plan')} (dots: the plan served at each checkpoint)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def demo(
    exit_when_done: Annotated[bool, typer.Option("--exit", help="Stop everything when the upgrade completes.")] = False,
    gallery: Annotated[int, typer.Option(min=100, max=10000, help="Fashion-MNIST test images to ingest.")] = 4000,
    train_size: Annotated[int, typer.Option(min=1000, max=60000, help="Training images for the models.")] = 30000,
    epochs: Annotated[
        int | None,
        typer.Option(min=1, help="Training epochs of each model; default 2 (--colour: 6)", show_default=False),
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            parser=choices.strategy,
            help="Backfill order: {strategies} (default: the plan's, as POST /upgrade decides).",
            show_default=False,
        ),
    ] = None,
    plan: Annotated[
        str | None,
        typer.Option(
            parser=choices.plan, help="Query plan: {plans} (default: the server's, auto).", show_default=False
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=1, max=8, help="Celery worker processes.")] = 1,
    port: Annotated[int, typer.Option(help="API port (0: any free port).")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path("var/demo"),
    seed: Annotated[int, typer.Option(help="Seed of training and the probe set.")] = 0,
    colour: Annotated[
        bool,
        typer.Option(
            "--colour",
            help="Colour photos (64 x 64 JPEGs made from Fashion-MNIST) and RGB models at 32 x 32: an "
            "old conv2, a new ResNet-18 layout.",
        ),
    ] = False,
    index: Annotated[
        IndexChoice,
        typer.Option(
            help="Where the gallery's vectors are searched: in-process (every API replica holds the "
            "index) or milvus (a Milvus standalone the demo starts from the milvus package, unless "
            "HOTREFRESH_MILVUS_URI names one).",
        ),
    ] = IndexChoice.IN_PROCESS,
) -> None:
    """Train (or reuse) an old and a RACT-new model, ingest a gallery, hot-refresh it live."""
    import httpx

    from cli.launcher import System, free_port
    from cli.upgrade import watch_upgrade
    from service.settings import PLACEHOLDER_TOKEN, get_settings

    data_dir = data_dir.resolve()
    epochs = epochs or (6 if colour else 2)
    old_path, new_path = _train_models(data_dir / "model-cache", train_size, epochs, seed, colour)
    new_name = "fmnist-colour-new-ract" if colour else "fmnist-new-ract"

    run_dir = data_dir / "run"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh gallery each run; trained models are kept
    (run_dir / "data" / "models").mkdir(parents=True)
    for p in (old_path, new_path):
        shutil.copy2(p, run_dir / "data" / "models" / p.name)
    settings = get_settings()
    token = settings.admin_token if settings.admin_token not in ("", PLACEHOLDER_TOKEN) else DEMO_TOKEN
    env = {
        "HOTREFRESH_ENV": settings.env,
        "HOTREFRESH_ADMIN_TOKEN": token,
        "HOTREFRESH_DATA_DIR": str(run_dir / "data"),
        "HOTREFRESH_REDIS_PREFIX": f"hotrefresh-demo-{os.getpid()}",
    }
    with System(run_dir, env=env) as system, contextlib.ExitStack() as servers:
        if settings.redis_url:
            typer.echo(f"redis: {settings.redis_url}")
        else:
            typer.echo(f"redis: embedded at {system.start_redis()}")
        if index is IndexChoice.MILVUS:
            system.env.update(_milvus(settings, servers))
            typer.echo(f"index: Milvus at {system.env['HOTREFRESH_MILVUS_URI']} ({settings.milvus_index_type})")
        api = system.start_api(port=port or free_port())
        assert api.url is not None  # start_api sets it
        for i in range(workers):
            system.start_worker(name=f"worker{i + 1}")
        typer.echo(f"api: {api.url}  (docs: {api.url}/docs, metrics: {api.url}/metrics); logs in {run_dir}/logs")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api.url, headers=headers, timeout=300) as client:
            for p in (old_path, new_path):
                r = client.post("/models", data={"path": p.name})
                if r.status_code != 201:
                    raise typer.Exit(_fail(f"POST /models {p.name}", r))
            from cli.ingest import ingest

            ingest(None, fashion_mnist=True, colour=colour, split="test", limit=gallery, url=api.url, token=token)
            probe = client.get(f"/gallery/fmnist-test-{0:05d}").json()
            typer.echo(f"gallery: {gallery} items on {probe.get('model')}; starting the hot refresh")
            t0 = time.monotonic()
            body = {
                "model": new_name,
                **({"plan": plan} if plan else {}),
                **({"strategy": strategy} if strategy else {}),
            }
            r = client.post("/upgrade", json=body)
            if r.status_code != 202:
                raise typer.Exit(_fail("POST /upgrade", r))
            final = watch_upgrade(api.url, token, r.json()["id"], 0.5)
            took = time.monotonic() - t0
        curve_png, record = run_dir / "backfill-curve.png", run_dir / "upgrade.json"
        record.write_text(json.dumps(final, indent=1, default=str))
        plot_live_curve(final, curve_png)
        typer.echo(
            f"upgrade {final['id']}: {final['state']} in {took:.1f}s, {final['done']} re-encoded, "
            f"{final['failed']} failed; live mAP {_pct(final.get('map'))}, NFR {_pct(final.get('nfr'))} "
            f"(old-to-old mAP {_pct((final.get('baseline') or {}).get('old_map'))})"
        )
        typer.echo(f"curve: {curve_png}\nrecord: {record}")
        if exit_when_done:
            return
        typer.echo(f"serving at {api.url} (docs: {api.url}/docs); Ctrl-C to stop")
        try:
            while all(p.popen.poll() is None for p in system.procs):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


def _milvus(settings: Settings, servers: contextlib.ExitStack) -> dict[str, str]:
    """The demo's Milvus settings: the configured server, else an embedded standalone (the real
    engine from the ``milvus`` package), stopped and removed with the demo. Its own collection
    prefix per run, so a shared server keeps other galleries apart."""
    uri = settings.milvus_uri
    if not uri:
        from cli.embedded_milvus import EmbeddedMilvus

        server = EmbeddedMilvus()
        servers.callback(server.remove)
        typer.echo("milvus: starting an embedded standalone (a few seconds)")
        server.start()
        uri = server.uri
    return {
        "HOTREFRESH_INDEX_BACKEND": "milvus",
        "HOTREFRESH_MILVUS_URI": uri,
        "HOTREFRESH_MILVUS_PREFIX": f"demo_{os.getpid()}",
        "HOTREFRESH_MILVUS_INDEX_TYPE": settings.milvus_index_type,
        "HOTREFRESH_MILVUS_INDEX_PARAMS": json.dumps(settings.milvus_index_params),
        "HOTREFRESH_MILVUS_SEARCH_PARAMS": json.dumps(settings.milvus_search_params),
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _fail(what: str, r: Any) -> int:
    typer.echo(f"error: {what} answered {r.status_code}: {r.text}", err=True)
    return 1
