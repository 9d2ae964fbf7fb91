"""Pure-torch CNN encoders, built by name through one registry.

Every encoder maps an image batch to an L2-normalised embedding and to class logits computed
*from that normalised embedding*. Computing the logits from the normalised vector is what lets
the service feed a stored gallery vector (old model) through a classifier (new model) and get a
meaningful softmax: the classifier never sees anything but unit vectors. The logit scale is a
learnable scalar because unit vectors times unit-ish weights give logits in [-1, 1], far too flat
for a useful softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BackboneFactory = Callable[[int], tuple[nn.Module, int]]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Registers ``f(in_channels) -> (module, n_features)``; the module yields flat feature vectors."""

    def deco(fn: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"encoder architecture {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_architectures() -> list[str]:
    return sorted(_REGISTRY)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_backbone("conv2")
def _conv2(in_channels: int) -> tuple[nn.Module, int]:
    """The small "old" model: two conv blocks and a 7x7 pooled map."""
    return nn.Sequential(
        *_block(in_channels, 16), nn.MaxPool2d(2),
        *_block(16, 32), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
    ), 32 * 7 * 7  # fmt: skip


@register_backbone("conv4")
def _conv4(in_channels: int) -> tuple[nn.Module, int]:
    """The larger "new" model: four conv blocks, twice the depth and width of ``conv2`` at 7x7.

    Sized for CPU training on a shared 2-core machine: the extra depth sits at the low resolutions.
    """
    return nn.Sequential(
        *_block(in_channels, 16), nn.MaxPool2d(2),
        *_block(16, 32), *_block(32, 32), nn.MaxPool2d(2),
        *_block(32, 64),
        nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(),
    ), 64 * 7 * 7  # fmt: skip


class CosineClassifier(nn.Module):
    """Linear head on unit vectors with a learnable logit scale (kept in log space, positive)."""

    def __init__(self, embedding_dim: int, num_classes: int, init_scale: float = 5.0) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_classes)
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * self.fc(emb)

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, b) with the scale folded in, so ``logits = v @ W.T + b`` outside torch."""
        s = self.log_scale.detach().exp()
        return self.fc.weight.detach() * s, self.fc.bias.detach() * s


class Encoder(nn.Module):
    """Backbone -> linear projection -> L2 norm (the embedding) -> cosine classifier."""

    def __init__(self, arch: str, embedding_dim: int, num_classes: int, in_channels: int = 1) -> None:
        super().__init__()
        self.arch = arch
        self.backbone, n_features = _REGISTRY[arch](in_channels)
        self.embed = nn.Linear(n_features, embedding_dim)
        self.classifier = CosineClassifier(embedding_dim, num_classes)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone(x)), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(x)
        return emb, self.classifier(emb)


def create_model(arch: str, embedding_dim: int, num_classes: int, in_channels: int = 1) -> Encoder:
    """Builds a registered architecture; unknown names and bad sizes fail with a clear message."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown encoder architecture {arch!r}; known: {', '.join(list_architectures())}")
    if embedding_dim < 1 or num_classes < 1 or in_channels not in (1, 3):
        raise ValueError(
            f"bad encoder sizes: embedding_dim={embedding_dim}, num_classes={num_classes}, "
            f"in_channels={in_channels} (must be >=1, >=1, and 1 or 3)"
        )
    return Encoder(arch, embedding_dim, num_classes, in_channels)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
