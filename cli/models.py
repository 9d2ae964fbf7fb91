"""``hotrefresh train | experiment | evaluate``: typer command functions, registered by
``cli/main.py``. torch and the training code are imported inside each command so ``--help``
stays instant."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

PlansOpt = Annotated[
    str | None,
    typer.Option(
        help="comma-separated query plans (models/plans/: the paper's, ours) or the live chooser; "
        "each adds one curve per method x ordering; default: the paper's plan alone",
        show_default=False,
    ),
]
CalibrationOpt = Annotated[
    str, typer.Option(help="score calibration of dual/transform: raw, zscore, spread or prob (labelled pairs)")
]
TransformOpt = Annotated[str, typer.Option(help="the old->new map of transform: lstsq or procrustes")]
NfrTargetOpt = Annotated[
    float | None,
    typer.Option(
        min=0.0,
        max=1.0,
        help="auto: the probe NFR@1 a plan must stay within; default: relative, the finished "
        "upgrade's NFR@1 estimated at each checkpoint plus one point",
        show_default=False,
    ),
]


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _dataset(name: str) -> str:
    from models.data import DATASETS

    if name not in DATASETS:
        raise typer.BadParameter(
            f"unknown data set {name!r}; choose from {', '.join(DATASETS)}", param_hint="--dataset"
        )
    return name


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")


def train(
    out: Annotated[Path, typer.Option(help="checkpoint file to write")],
    name: Annotated[str, typer.Option(help="model name stored in the checkpoint")],
    loss: Annotated[
        str | None, typer.Option(help="new model: ract|vanilla|bct|ract+bct|none; omit for an old (CE) model")
    ] = None,
    old: Annotated[Path | None, typer.Option(help="old model checkpoint (required with --loss)")] = None,
    arch: Annotated[
        str, typer.Option(help="encoder architecture: conv2, conv4, resnet18, resnet34, resnet50")
    ] = "conv2",
    size: Annotated[int, typer.Option(min=8, max=1024, help="input size (square) of the model")] = 28,
    channels: Annotated[int, typer.Option(min=1, max=3, help="input channels: 1 (grey) or 3 (RGB)")] = 1,
    augment: Annotated[
        bool,
        typer.Option("--augment/--shift", help="the paper's random resized crop and flip, or a small shift and flip"),
    ] = False,
    width: Annotated[
        int | None, typer.Option(min=1, help="ResNets: channels of the first stage (default 64)", show_default=False)
    ] = None,
    blocks: Annotated[
        str | None, typer.Option(help="ResNets: residual blocks per stage, e.g. 1,1,1,1", show_default=False)
    ] = None,
    stem: Annotated[
        str | None,
        typer.Option(
            help="ResNets: imagenet (7x7 stride 2 + max-pool, for 224) or small (3x3, for 28-64 pixels); "
            "default small below 96 pixels",
            show_default=False,
        ),
    ] = None,
    embedding_dim: Annotated[int, typer.Option(min=1)] = 64,
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=2)] = 256,
    lr: Annotated[float, typer.Option(min=0.0)] = 3e-3,
    tau: Annotated[float, typer.Option(help="temperature of Eq. 5/6")] = 0.05,
    lam: Annotated[float, typer.Option(help="weight of the compatibility term (Eq. 8)")] = 1.0,
    topk: Annotated[int | None, typer.Option(help="keep only the k hardest negatives of each kind")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    allocation: Annotated[
        str | None, typer.Option(help="expansion|open-data|open-class: train on the old or new part")
    ] = None,
    part: Annotated[str, typer.Option(help="old|new: which part of --allocation")] = "new",
    folder: Annotated[Path | None, typer.Option(help="labeled image folder root/<class>/<image>")] = None,
    dataset: Annotated[str, typer.Option(help="without --folder: fashion-mnist, digits or fashion-colour")] = (
        "fashion-mnist"
    ),
    limit: Annotated[int | None, typer.Option(help="use only the first N training images")] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train an old model (cross-entropy) or a new model with a compatibility loss."""
    _logging()
    import numpy as np

    from models.data import allocate, load_dataset, load_image_folder
    from models.train import TrainConfig, train_and_save

    if loss is not None and old is None:
        raise typer.BadParameter("--loss trains a new model and needs --old", param_hint="--old")
    if part not in ("old", "new"):
        raise typer.BadParameter("must be old or new", param_hint="--part")
    if channels == 2:
        raise typer.BadParameter("must be 1 or 3", param_hint="--channels")
    options: dict[str, object] = {}
    if arch.startswith("resnet"):
        options["stem"] = stem or ("small" if size < 96 else "imagenet")
        if width is not None:
            options["width"] = width
        if blocks is not None:
            try:
                options["blocks"] = [int(b) for b in _csv(blocks)]
            except ValueError:
                raise typer.BadParameter("comma-separated integers", param_hint="--blocks") from None
    elif width is not None or blocks is not None or stem is not None:
        raise typer.BadParameter(f"{arch} takes no --width, --blocks or --stem", param_hint="--arch")
    classes = 10
    if folder is not None:
        # stored at the model's size (short side resized, centre crop: what serving does)
        images, labels, names = load_image_folder(folder, size=(size, size), channels=channels)
        classes = len(names)
    else:
        images, labels = load_dataset(_dataset(dataset), "train")
    if limit:
        images, labels = images[:limit], labels[:limit]
    old_classes = None
    if allocation is not None:
        a = allocate(allocation, labels, seed)
        idx = a.old_idx if part == "old" else a.new_idx
        images, labels, old_classes = images[idx], labels[idx], a.old_classes
    cfg = TrainConfig(
        arch=arch,
        embedding_dim=embedding_dim,
        num_classes=int(max(classes, int(np.max(labels)) + 1)),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        tau=tau,
        lam=lam,
        topk=topk,
        seed=seed,
        input_channels=channels,
        input_size=(size, size),
        augment="crop" if augment else "shift",
        arch_options=options,
    )
    try:
        meta, history = train_and_save(
            images, labels, cfg, out, name, old_path=old, old_classes=old_classes, progress=progress
        )
    except ValueError as e:  # bad architecture options, sizes, or an old model of another dimension
        raise typer.BadParameter(str(e)) from None
    typer.echo(
        f"wrote {out} ({meta.arch}, {meta.trained_with}, compatible_with={meta.compatible_with}, "
        f"train acc {history[-1]['train_acc']:.3f})"
    )


def export(
    checkpoint: Annotated[Path, typer.Argument(help="a hotrefresh checkpoint (hotrefresh train's output)")],
    out: Annotated[Path, typer.Option(help="the TorchScript file to write; its metadata goes beside it as .json")],
    name: Annotated[str | None, typer.Option(help="register under another name", show_default=False)] = None,
) -> None:
    """Export a checkpoint as a bring-your-own encoder: a TorchScript archive (metadata inside
    and beside it), checked to give the checkpoint's embeddings."""
    import json

    from models.checkpoint import CheckpointError
    from models.torchscript import export_torchscript

    try:
        doc = export_torchscript(checkpoint, out, name=name)
    except CheckpointError as e:
        raise typer.BadParameter(str(e), param_hint="CHECKPOINT") from None
    typer.echo(f"wrote {out} and {out.with_suffix('.json')}: {json.dumps(doc)}")


def _sequential(
    out: Path,
    dataset: str,
    seeds: str | None,
    methods: str | None,
    orderings: str | None,
    plans: str | None,
    epochs: int | None,
    train_limit: int | None,
    queries: int | None,
    gallery: int | None,
    quick: bool,
    models_dir: Path,
) -> None:
    from models.experiment import LOSS_OF_METHOD
    from models.sequential import SequentialConfig, run_sequential

    cfg = SequentialConfig(dataset=_dataset(dataset))
    if dataset == "digits":  # 539 test images
        cfg.n_queries, cfg.n_gallery, cfg.train_limit, cfg.batch_size, cfg.epochs = 150, 389, None, 64, 6
    if quick:
        cfg.seeds, cfg.epochs = [0], 2
    if seeds:
        cfg.seeds = [int(x) for x in _csv(seeds)]
    if methods:
        cfg.methods = _csv(methods)
        if unknown := [m for m in cfg.methods if m not in LOSS_OF_METHOD]:
            raise typer.BadParameter(f"unknown method(s) {unknown}", param_hint="--methods")
    if orderings:
        cfg.ordering = _csv(orderings)[0]
    from models.plans import PAPER

    ours = [p for p in _csv(plans or PAPER) if p != PAPER]
    cfg.plan = ours[0] if ours else cfg.plan
    for name, value in (
        ("epochs", epochs),
        ("train_limit", train_limit),
        ("n_queries", queries),
        ("n_gallery", gallery),
    ):
        if value:
            setattr(cfg, name, value)
    summary = run_sequential(cfg, out, models_dir / "sequential")
    typer.echo((out / cfg.dataset / "sequential.md").read_text())
    if not all(summary["checks"].values()):
        typer.echo("some sequential checks do not hold (see sequential.json)", err=True)


def experiment(
    out: Annotated[Path, typer.Option(help="results folder (one sub-folder per allocation)")] = Path(
        "benchmarks/results/experiment"
    ),
    allocation: Annotated[list[str], typer.Option(help="expansion|open-data|open-class (repeatable)")] = [  # noqa: B006
        "expansion"
    ],
    quick: Annotated[bool, typer.Option(help="< 10 min: RACT+vanilla, random+margin, one seed")] = False,
    seeds: Annotated[
        str | None, typer.Option(help="comma-separated seeds; default 0,1,2 (--quick: 0)", show_default=False)
    ] = None,
    orderings: Annotated[
        str | None,
        typer.Option(
            help="comma-separated backfill orders (models/uncertainty.py); "
            "default the paper's four (--quick: random and margin)",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[str, typer.Option(help="fashion-mnist, or digits (scikit-learn's bundled 8 x 8 digits)")] = (
        "fashion-mnist"
    ),
    methods: Annotated[
        str | None,
        typer.Option(
            help="comma-separated new-model methods: ract, vanilla, bct, ract+bct (RACT's term on top of BCT's, "
            "the paper's App. A.5), independent; default: ract,vanilla,bct,independent "
            "(--quick: ract,vanilla)",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="epochs of old and new models")] = None,
    train_limit: Annotated[int | None, typer.Option(help="use a seeded subset of N training images")] = None,
    queries: Annotated[int | None, typer.Option(help="test images used as queries")] = None,
    gallery: Annotated[int | None, typer.Option(help="test images used as the gallery")] = None,
    tau: Annotated[float, typer.Option(help="temperature of RACT and vanilla")] = 0.05,
    lam: Annotated[float, typer.Option(help="compatibility weight of RACT, vanilla, ract+bct (BCT keeps 1)")] = 1.0,
    tune: Annotated[
        bool, typer.Option(help="first pick tau/lambda/top-k per method on a validation split of TRAINING data")
    ] = False,
    k: Annotated[int | None, typer.Option(help="mAP@k instead of full-ranking mAP")] = None,
    models_dir: Annotated[Path, typer.Option(help="where checkpoints go (reused if present)")] = Path(
        "var/experiment-models"
    ),
    data_root: Annotated[Path | None, typer.Option(help="folder with the Fashion-MNIST .gz files")] = None,
    progress: Annotated[bool, typer.Option()] = True,
    plans: PlansOpt = None,
    calibration: CalibrationOpt = "raw",
    transform: TransformOpt = "lstsq",
    nfr_target: NfrTargetOpt = None,
    sequential: Annotated[
        bool,
        typer.Option(
            help="the paper's Sec. 5.4 instead: generations on 30/60/80/100% of the data, each compatible with "
            "the one before; hot refresh vs no refresh per generation, the paper's plan and ours (the first of "
            "--plans that is not paper; default blend). Writes <out>/<dataset>/sequential.{json,md}"
        ),
    ] = False,
) -> None:
    """Train old + RACT/vanilla/BCT/independent new models and write backfill curves and checks."""
    _logging()
    import json

    from models.experiment import ExperimentConfig, run_experiment

    if sequential:
        _sequential(
            out, dataset, seeds, methods, orderings, plans, epochs, train_limit, queries, gallery, quick, models_dir
        )
        return

    overrides = {m: {"tau": tau, "lam": lam} for m in ("ract", "vanilla", "ract+bct")}
    if tune:
        from models.tune import tune as run_tuning

        base = ExperimentConfig(
            allocation="expansion",
            methods=["ract", "vanilla"],
            validation_size=10000,
            data_root=str(data_root) if data_root else None,
        )
        if epochs:
            base.epochs_old = base.epochs_new = epochs
        result = run_tuning(
            base,
            out / "tuning",
            models_dir / "tuning",
            taus=[0.05, 0.1],
            lams=[0.25, 0.5, 1.0],
            topks=[None, 10],
            progress=progress,
        )
        overrides = result["best"]
        if "ract" in overrides:  # RACT's term of ract+bct takes RACT's tuned tau and lambda
            overrides.setdefault("ract+bct", overrides["ract"])
        typer.echo(f"tuned on training data: {json.dumps(overrides)}")
    for alloc in allocation:
        cfg = ExperimentConfig.quick(alloc) if quick else ExperimentConfig(allocation=alloc)
        if seeds:
            cfg.seeds = [int(s) for s in seeds.split(",") if s.strip()]
        if orderings:
            cfg.orderings = _csv(orderings)
        cfg.dataset = _dataset(dataset)
        if methods:
            from models.experiment import LOSS_OF_METHOD

            cfg.methods = [m.strip() for m in methods.split(",") if m.strip()]
            unknown = [m for m in cfg.methods if m not in LOSS_OF_METHOD]
            if unknown:
                raise typer.BadParameter(f"unknown method(s) {unknown}; choose from {', '.join(LOSS_OF_METHOD)}")
        if epochs:
            cfg.epochs_old = cfg.epochs_new = epochs
        if train_limit:
            cfg.train_limit = train_limit
        if queries:
            cfg.n_queries = queries
        if gallery:
            cfg.n_gallery = gallery
        cfg.overrides, cfg.k = overrides, k
        if plans:
            cfg.plans = _csv(plans)
        cfg.calibration, cfg.transform = calibration, transform
        cfg.nfr_target = nfr_target  # None: the relative bound, as a live upgrade's default
        cfg.data_root = str(data_root) if data_root else None
        summary = run_experiment(cfg, out, models_dir=models_dir, progress=progress)
        typer.echo(f"{alloc}: wrote {out / alloc}/curve.json, curve.md, curve.png")
        typer.echo(json.dumps({k: v["holds"] for k, v in summary["checks"].items()}))


def evaluate(
    old: Annotated[Path, typer.Option(help="old model checkpoint")],
    new: Annotated[list[str], typer.Option(help="METHOD=PATH, e.g. ract=var/new.pt (repeatable)")],
    out: Annotated[Path, typer.Option(help="folder for curve.json/.md/.png")] = Path("var/evaluate"),
    orderings: Annotated[
        str | None,
        typer.Option(help="comma-separated backfill orders (models/uncertainty.py); default: the paper's four"),
    ] = None,
    fractions: Annotated[str, typer.Option(help="backfill percentages")] = "0,10,20,30,40,50,60,70,80,90,100",
    queries: Annotated[int, typer.Option(min=1)] = 2000,
    gallery: Annotated[int, typer.Option(min=1)] = 8000,
    k: Annotated[int | None, typer.Option(help="mAP@k instead of full-ranking mAP")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    folder: Annotated[Path | None, typer.Option(help="labeled image folder to evaluate on")] = None,
    dataset: Annotated[str, typer.Option(help="without --folder: fashion-mnist or digits (its test split)")] = (
        "fashion-mnist"
    ),
    plans: PlansOpt = None,
    calibration: CalibrationOpt = "raw",
    transform: TransformOpt = "lstsq",
    nfr_target: NfrTargetOpt = None,
) -> None:
    """Evaluate backfill curves of new models against an old one on held-out images."""
    _logging()
    from models.checkpoint import load_checkpoint
    from models.data import eval_split, load_dataset, load_image_folder
    from models.evaluate import evaluate_backfill, parse_fractions, write_outputs
    from models.plans import PAPER
    from models.uncertainty import PAPER_ORDERINGS

    pairs = {}
    for item in new:
        method, sep, path = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected METHOD=PATH, got {item!r}", param_hint="--new")
        pairs[method] = load_checkpoint(path)
    if folder is not None:
        images, labels, _ = load_image_folder(folder)
        dataset = str(folder)
    else:
        images, labels = load_dataset(_dataset(dataset), "test")
    q, g = eval_split(labels, n_queries=queries, n_gallery=gallery, seed=seed)
    doc = evaluate_backfill(
        load_checkpoint(old),
        pairs,
        images,
        labels,
        q,
        g,
        orderings=_csv(orderings) if orderings else list(PAPER_ORDERINGS),
        fractions=parse_fractions(fractions),
        k=k,
        seed=seed,
        meta={"dataset": dataset, "allocation": None},
        plans=_csv(plans or PAPER),
        calibration=calibration,
        transform=transform,
        nfr_target=nfr_target,
    )
    paths = write_outputs(doc, out)
    typer.echo(f"wrote {paths['json']}, {paths['md']}, {paths['png']}")
