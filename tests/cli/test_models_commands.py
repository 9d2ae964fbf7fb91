import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.utils.checkpoints import make_tiny_checkpoint

runner = CliRunner()


def test_help_of_each_models_command() -> None:
    for cmd in ("train", "experiment", "evaluate", "export"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "--out" in r.output


def test_train_new_model_without_old_is_refused(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "n.pt"), "--name", "n", "--loss", "ract"])
    assert r.exit_code != 0 and "--old" in r.output
    assert not (tmp_path / "n.pt").exists()


def test_train_then_evaluate_on_fashion_mnist(tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(tmp_path / "o.pt"),
            "--name",
            "o",
            "--limit",
            "300",
            "--epochs",
            "1",
            "--embedding-dim",
            "16",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    make_tiny_checkpoint(tmp_path / "n.pt", "n", arch="conv4", embedding_dim=16, compatible_with="o")
    r = runner.invoke(
        app,
        [
            "evaluate",
            "--old",
            str(tmp_path / "o.pt"),
            "--new",
            f"ract={tmp_path / 'n.pt'}",
            "--out",
            str(tmp_path / "ev"),
            "--queries",
            "50",
            "--gallery",
            "200",
            "--orderings",
            "random,margin",
            "--fractions",
            "0,50,100",
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "ev" / "curve.json").read_text())
    assert [p["fraction"] for p in doc["curves"][0]["points"]] == [0.0, 0.5, 1.0]
    assert (tmp_path / "ev" / "curve.png").stat().st_size > 0


def test_train_a_colour_resnet_with_the_papers_augmentation_then_export_it(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    from models.checkpoint import load_checkpoint
    from models.torchscript import load_encoder

    ckpt = tmp_path / "r.pt"
    r = runner.invoke(
        app,
        [
            "train",
            "--out",
            str(ckpt),
            "--name",
            "r18",
            "--arch",
            "resnet18",
            "--size",
            "64",
            "--channels",
            "3",
            "--augment",
            "--width",
            "8",
            "--blocks",
            "1,1,1,1",
            "--dataset",
            "fashion-colour",
            "--limit",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--embedding-dim",
            "16",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = load_checkpoint(ckpt, "cpu").meta
    assert (meta.arch, meta.input_channels, meta.input_size) == ("resnet18", 3, (64, 64))
    assert meta.arch_options == {"stem": "small", "width": 8, "blocks": [1, 1, 1, 1]}
    assert meta.extra["recipe"]["augment"] == "crop"
    r = runner.invoke(app, ["export", str(ckpt), "--out", str(tmp_path / "ts" / "r18.pt")])
    assert r.exit_code == 0, r.output
    exported = load_encoder(tmp_path / "ts" / "r18.pt", "cpu")
    buf = io.BytesIO()
    Image.fromarray(np.full((90, 120, 3), (200, 30, 60), np.uint8)).save(buf, format="JPEG")
    emb = exported.embed_images([Image.open(io.BytesIO(buf.getvalue()))])
    assert emb.shape == (1, 16) and np.isclose(np.linalg.norm(emb), 1.0, atol=1e-5)
    # bad requests are refused before anything is trained
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "x.pt"), "--name", "x", "--width", "8"])
    assert r.exit_code != 0 and "takes no --width" in r.output
    r = runner.invoke(app, ["export", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "y.pt")])
    assert r.exit_code != 0 and "does not exist" in r.output
