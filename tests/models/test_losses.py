import math

import pytest
import torch
import torch.nn.functional as F

from models.losses import CompatibilityLoss, bct_loss, extend_old_classifier


def _naive(new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor, tau: float, kind: str, topk=None) -> float:
    """Eq. 5 / Eq. 6 written one sample at a time, as docs/models.md ("The compatibility losses") states them."""
    total = 0.0
    b = len(labels)
    for x in range(b):
        pos = math.exp(float(new[x] @ old[x]) / tau)
        negs = [k for k in range(b) if labels[k] != labels[x]]  # B \ p(x)
        n2o = sorted((float(new[x] @ old[k]) / tau for k in negs), reverse=True)
        n2n = sorted((float(new[x] @ new[k]) / tau for k in negs), reverse=True)
        if topk is not None:
            n2o, n2n = n2o[:topk], n2n[:topk]
        denom = pos + sum(math.exp(v) for v in n2o)
        if kind == "ract":
            denom += sum(math.exp(v) for v in n2n)
        total += -math.log(pos / denom)
    return total / b


@pytest.mark.parametrize("kind", ["ract", "vanilla"])
@pytest.mark.parametrize("topk", [None, 3])
def test_losses_equal_naive_per_sample_loop(kind: str, topk: int | None) -> None:
    g = torch.Generator().manual_seed(0)
    new = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    old = F.normalize(torch.randn(12, 8, generator=g, dtype=torch.float64), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 4, 5, 5, 0])  # same-class items must be masked
    got = CompatibilityLoss(kind, tau=0.5, topk=topk)(new, old, labels)
    assert got.item() == pytest.approx(_naive(new, old, labels, 0.5, kind, topk), rel=1e-9)


def test_same_class_items_are_not_negatives() -> None:
    """A batch of one class has no negatives: the positive is the whole denominator, loss 0.
    The same batch relabelled into distinct classes has negatives and a positive loss."""
    g = torch.Generator().manual_seed(1)
    new = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    old = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    for kind in ("ract", "vanilla"):
        loss = CompatibilityLoss(kind, tau=0.1)
        assert loss(new, old, torch.zeros(6, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)
        assert loss(new, old, torch.arange(6)).item() > 0.1


def test_ract_adds_new_to_new_negatives() -> None:
    g = torch.Generator().manual_seed(2)
    new = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    old = F.normalize(torch.randn(10, 8, generator=g), dim=1)
    labels = torch.arange(10)
    assert CompatibilityLoss("ract")(new, old, labels) > CompatibilityLoss("vanilla")(new, old, labels)


def test_old_features_get_no_gradient_and_new_do() -> None:
    new = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    old = F.normalize(torch.randn(6, 4), dim=1).requires_grad_(True)
    CompatibilityLoss("ract")(new, old, torch.arange(6)).backward()
    assert old.grad is None
    assert new.grad is not None and new.grad.abs().sum() > 0


def test_bad_loss_arguments() -> None:
    with pytest.raises(ValueError, match="kind"):
        CompatibilityLoss("bogus")
    with pytest.raises(ValueError, match="tau"):
        CompatibilityLoss("ract", tau=0)
    with pytest.raises(ValueError, match="topk"):
        CompatibilityLoss("ract", topk=0)


def test_bct_uses_frozen_old_head_and_extends_unseen_classes() -> None:
    w = torch.randn(4, 3, requires_grad=True)
    b = torch.zeros(4, requires_grad=True)
    new = torch.randn(5, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0])
    bct_loss(new, labels, w, b).backward()
    assert w.grad is None and b.grad is None and new.grad is not None
    mean3 = torch.tensor([0.0, 2.0, 0.0])
    w2, b2 = extend_old_classifier(w.detach(), b.detach(), torch.tensor([0, 1, 2]), {3: mean3})
    assert torch.equal(w2[:3], w.detach()[:3])
    assert torch.allclose(w2[3] / w2[3].norm(), torch.tensor([0.0, 1.0, 0.0]))
    assert w2[3].norm() == pytest.approx(w.detach()[:3].norm(dim=1).mean().item(), rel=1e-5)
