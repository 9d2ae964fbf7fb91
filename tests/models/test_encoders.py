"""The backbones: sizes, options, and refusals."""

from __future__ import annotations

import pytest
import torch

from models.encoders import create_model, list_architectures


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_the_resnets_are_registered_beside_the_small_cnns() -> None:
    assert {"conv2", "conv4", "resnet18", "resnet34", "resnet50"} <= set(list_architectures())


@pytest.mark.parametrize(
    ("arch", "trunk_params"), [("resnet18", 11_176_512), ("resnet34", 21_284_672), ("resnet50", 23_508_032)]
)
def test_full_width_resnets_have_torchvisions_trunk_sizes(arch: str, trunk_params: int) -> None:
    """The published trunk sizes (torchvision's models without their fc layer)."""
    model = create_model(arch, 128, 10, 3)
    assert _params(model.backbone) == trunk_params


@pytest.mark.parametrize(
    ("options", "size"),
    [
        ({"width": 8, "stem": "small"}, 32),
        ({"width": 8, "blocks": [1, 1, 1, 1]}, 96),
        ({"width": 4, "blocks": [1, 2]}, 28),
    ],
)
def test_width_depth_and_stem_options_build_small_resnets(options: dict, size: int) -> None:
    model = create_model("resnet18", 32, 5, 3, **options).eval()
    emb, logits = model(torch.randn(3, 3, size, size))
    assert emb.shape == (3, 32) and logits.shape == (3, 5)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    bigger = create_model("resnet18", 32, 5, 3, **{**options, "width": 2 * options["width"]})
    assert _params(bigger) > 3 * _params(model)


@pytest.mark.parametrize("options", [{"stem": "huge"}, {"width": 0}, {"blocks": []}, {"depth": 3}])
def test_bad_options_are_refused_with_a_clear_error(options: dict) -> None:
    with pytest.raises(ValueError, match="ResNet|options"):
        create_model("resnet18", 32, 5, 3, **options)
    with pytest.raises(ValueError, match="bad options"):
        create_model("conv2", 32, 5, 1, width=8)
