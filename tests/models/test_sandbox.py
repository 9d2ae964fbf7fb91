"""TorchScript from outside cannot touch the host (``models.sandbox``): archives built here as
a hostile uploader would build them, vetted in the sandbox, with a marker file outside it that
must stay untouched; a forward that runs too long is stopped at the configured limit; what
comes back holds no code of the uploader's."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError
from models.sandbox import SandboxLimits, vet_torchscript
from models.torchscript import load_torchscript
from tests.utils.encoders import save_user_encoder
from tests.utils.hostile_encoders import (
    MARKER,
    SIZE,
    HarmlessState,
    KeepsAnObject,
    OverwritesOnLoad,
    ReadsInForward,
    Slow,
    doc,
    save,
)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A file outside any sandbox, writable by the test's own user."""
    path = tmp_path / "outside" / "marker.bin"
    path.parent.mkdir()
    path.write_bytes(MARKER)
    return path


def test_the_hostile_archive_writes_the_marker_when_loaded_in_process(tmp_path: Path, marker: Path) -> None:
    """The probe is real: loaded without the sandbox, it overwrites the file."""
    archive = save(OverwritesOnLoad(str(marker)), tmp_path / "evil.pt")
    torch.jit.load(str(archive))
    assert marker.read_bytes() == b"X" * len(MARKER)


def test_a_setstate_that_writes_a_host_file_is_refused_and_the_file_untouched(tmp_path: Path, marker: Path) -> None:
    archive = save(OverwritesOnLoad(str(marker)), tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a loadable TorchScript archive") as caught:
        vet_torchscript(archive, doc(), SandboxLimits())
    assert "unable to open file" in str(caught.value)  # the host's file is not there to open
    assert marker.read_bytes() == MARKER


def test_an_operator_that_reaches_files_is_refused_even_where_it_runs(tmp_path: Path) -> None:
    archive = save(ReadsInForward(), tmp_path / "reads.pt")
    with pytest.raises(CheckpointError, match="aten::from_file"):
        vet_torchscript(archive, doc(), SandboxLimits())


def test_a_forward_that_runs_too_long_is_stopped_at_the_limit(tmp_path: Path) -> None:
    archive = save(Slow(), tmp_path / "slow.pt")
    with pytest.raises(CheckpointError, match=r"did not finish within 3 s \(HOTREFRESH_MODEL_CHECK_SECONDS\)"):
        vet_torchscript(archive, doc(), SandboxLimits(seconds=3))


def test_the_vetted_archive_carries_no_code_of_the_uploader(tmp_path: Path) -> None:
    """Frozen: one forward graph printed by torch, weights as constants; the uploader's
    ``__setstate__`` is gone, so loading the archive again (API, workers) runs none of it."""
    archive = save(HarmlessState(), tmp_path / "state.pt")
    original = torch.jit.load(str(archive))
    assert original.loads == 1  # the uploader's __setstate__ ran on this load
    vetted, _ = vet_torchscript(archive, doc(), SandboxLimits())
    again = torch.jit.load(io.BytesIO(vetted))
    assert again._c._method_names() == ["forward"]
    code = "".join(
        zipfile.ZipFile(io.BytesIO(vetted)).read(n).decode()
        for n in zipfile.ZipFile(io.BytesIO(vetted)).namelist()
        if n.endswith(".py")
    )
    assert "__setstate__" not in code and "loads" not in code
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.inference_mode():  # the uploader's state counted its loads; the vetted one has none
        twice = torch.jit.load(io.BytesIO(vetted))
        np.testing.assert_array_equal(again(x).numpy(), twice(x).numpy())


def test_a_user_encoder_with_its_head_survives_vetting(tmp_path: Path) -> None:
    meta = save_user_encoder(tmp_path / "u.pt", "u", dim=16, sidecar=False)
    vetted, renamed = vet_torchscript(tmp_path / "u.pt", meta, SandboxLimits())
    (tmp_path / "v.pt").write_bytes(vetted)
    before = load_torchscript(tmp_path / "u.pt", "cpu", meta)
    after = load_torchscript(tmp_path / "v.pt", "cpu", renamed)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 3, 40, 40), dtype=np.uint8)
    np.testing.assert_allclose(after.embed_tensor(pixels), before.embed_tensor(pixels), atol=1e-5)
    for a, b in zip(after.classifier_weights(), before.classifier_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert json.dumps(renamed["classifier"]) != json.dumps(meta["classifier"])


def test_an_object_whose_class_would_run_on_load_is_refused(tmp_path: Path) -> None:
    """Freezing drops the module's own methods, but an object the graph still mutates keeps its
    class in the printed archive; a ``__setstate__`` there would run in every later load."""
    archive = save(KeepsAnObject(), tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="__setstate__"):
        vet_torchscript(archive, doc(), SandboxLimits())
