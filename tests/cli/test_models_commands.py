import json
from pathlib import Path

from typer.testing import CliRunner

from cli.main import app
from tests.utils.checkpoints import make_tiny_checkpoint

runner = CliRunner()


def test_help_of_each_models_command() -> None:
    for cmd in ("train", "experiment", "evaluate"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "--out" in r.output


def test_train_new_model_without_old_is_refused(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "n.pt"), "--name", "n", "--loss", "ract"])
    assert r.exit_code != 0 and "--old" in r.output
    assert not (tmp_path / "n.pt").exists()


def test_train_then_evaluate_on_fashion_mnist(tmp_path: Path) -> None:
    r = runner.invoke(app, ["train", "--out", str(tmp_path / "o.pt"), "--name", "o", "--limit", "300",
                            "--epochs", "1", "--embedding-dim", "16", "--no-progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    make_tiny_checkpoint(tmp_path / "n.pt", "n", arch="conv4", embedding_dim=16, compatible_with="o")
    r = runner.invoke(app, ["evaluate", "--old", str(tmp_path / "o.pt"), "--new", f"ract={tmp_path / 'n.pt'}",
                            "--out", str(tmp_path / "ev"), "--queries", "50", "--gallery", "200",
                            "--orderings", "random,margin", "--fractions", "0,50,100"])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "ev" / "curve.json").read_text())
    assert [p["fraction"] for p in doc["curves"][0]["points"]] == [0.0, 0.5, 1.0]
    assert (tmp_path / "ev" / "curve.png").stat().st_size > 0
