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
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

BackboneFactory = Callable[..., tuple[nn.Module, int]]  # (in_channels, **options) -> (module, n_features)
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Registers ``f(in_channels, **options) -> (module, n_features)``; the module yields flat
    feature vectors. Options are the architecture's own (stored in ``ModelMeta.arch_options``)."""

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
        *_block(in_channels, 16),
        nn.MaxPool2d(2),
        *_block(16, 32),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d((7, 7)),
        nn.Flatten(),
    ), 32 * 7 * 7


@register_backbone("conv4")
def _conv4(in_channels: int) -> tuple[nn.Module, int]:
    """The larger "new" model: four conv blocks, twice the depth and width of ``conv2`` at 7x7.

    Sized for CPU training on a shared 2-core machine: the extra depth sits at the low resolutions.
    """
    return nn.Sequential(
        *_block(in_channels, 16),
        nn.MaxPool2d(2),
        *_block(16, 32),
        *_block(32, 32),
        nn.MaxPool2d(2),
        *_block(32, 64),
        nn.AdaptiveAvgPool2d((7, 7)),
        nn.Flatten(),
    ), 64 * 7 * 7


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and an identity (or 1x1 projection) shortcut: ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride, as torchvision's v1.5), 1x1 expand by 4: ResNet-50."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


RESNET_STEMS = ("imagenet", "small")
_RESNETS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}


def resnet(
    in_channels: int,
    block: type[BasicBlock] | type[Bottleneck],
    blocks: tuple[int, ...] | list[int],
    *,
    width: int = 64,
    stem: str = "imagenet",
) -> tuple[nn.Module, int]:
    """A ResNet trunk with global average pooling (He et al. 2016, torchvision's layout).

    ``width``: channels of the first stage (64 in the paper's models; 8-16 keeps a CPU test
    fast); stage ``i`` has ``width * 2**i`` (times 4 after a bottleneck). ``blocks``: residual
    blocks per stage (the depth). ``stem``: ``imagenet`` (7x7 stride-2 convolution and max-pool,
    for 224 x 224 inputs) or ``small`` (one 3x3 convolution, no pooling, for 28-64 pixel inputs,
    as CIFAR ResNets do).
    """
    if stem not in RESNET_STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r}; choose one of {', '.join(RESNET_STEMS)}")
    if not 1 <= width <= 1024 or not blocks or not all(isinstance(b, int) and 1 <= b <= 64 for b in blocks):
        raise ValueError(f"bad ResNet options: width={width!r}, blocks={blocks!r}")
    layers: list[nn.Module]
    if stem == "imagenet":
        layers = [
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
    else:
        layers = [nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    cin = width
    for i, n in enumerate(blocks):
        for j in range(n):
            layers.append(block(cin, width * 2**i, 2 if (j == 0 and i > 0) else 1))
            cin = width * 2**i * block.expansion
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), cin


def _register_resnet(name: str) -> None:
    block, default_blocks = _RESNETS[name]

    def factory(
        in_channels: int, *, width: int = 64, stem: str = "imagenet", blocks: list[int] | None = None
    ) -> tuple[nn.Module, int]:
        depth = tuple(blocks) if blocks is not None else default_blocks
        return resnet(in_channels, block, depth, width=width, stem=stem)

    factory.__doc__ = f"{name}: {block.__name__} blocks {default_blocks} (``blocks`` overrides the depth)."
    register_backbone(name)(factory)


for _name in _RESNETS:
    _register_resnet(_name)


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

    def __init__(self, arch: str, embedding_dim: int, num_classes: int, in_channels: int = 1, **options: Any) -> None:
        super().__init__()
        self.arch = arch
        self.backbone, n_features = _REGISTRY[arch](in_channels, **options)
        self.embed = nn.Linear(n_features, embedding_dim)
        self.classifier = CosineClassifier(embedding_dim, num_classes)

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone(x)), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(x)
        return emb, self.classifier(emb)


def create_model(arch: str, embedding_dim: int, num_classes: int, in_channels: int = 1, **options: Any) -> Encoder:
    """Builds a registered architecture; unknown names, bad sizes and options fail with a clear
    message (ValueError)."""
    if arch not in _REGISTRY:
        raise ValueError(f"unknown encoder architecture {arch!r}; known: {', '.join(list_architectures())}")
    if embedding_dim < 1 or num_classes < 1 or in_channels not in (1, 3):
        raise ValueError(
            f"bad encoder sizes: embedding_dim={embedding_dim}, num_classes={num_classes}, "
            f"in_channels={in_channels} (must be >=1, >=1, and 1 or 3)"
        )
    try:
        return Encoder(arch, embedding_dim, num_classes, in_channels, **options)
    except TypeError as e:  # an option the architecture does not take
        raise ValueError(f"bad options for {arch!r}: {e}") from e


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
