"""Training objectives of the paper (Eq. 5-8) and the BCT baseline.

``n`` are new-model embeddings (trained), ``o`` old-model embeddings of the same images under an
independent augmentation (frozen, no gradient); all L2-normalised. Items of the same class as the
anchor are removed from the negatives (logit set to -inf), the anchor's own old feature is the
only positive (instance discrimination).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TAU = 0.05
DEFAULT_LAMBDA = 1.0


def _negatives(logits: torch.Tensor, neg_mask: torch.Tensor, topk: int | None) -> torch.Tensor:
    masked = logits.masked_fill(~neg_mask, float("-inf"))
    if topk is not None and topk < masked.shape[1]:
        masked = masked.topk(topk, dim=1).values
    return masked


class CompatibilityLoss(nn.Module):
    """Vanilla compatibility (Eq. 5) or RACT (Eq. 6, adds new-to-new negatives).

    ``topk`` keeps only the k hardest negatives of each kind (the authors' later code, k=10).
    """

    def __init__(self, kind: str = "ract", tau: float = DEFAULT_TAU, topk: int | None = None) -> None:
        super().__init__()
        if kind not in ("ract", "vanilla"):
            raise ValueError(f"compatibility loss kind must be 'ract' or 'vanilla', got {kind!r}")
        if tau <= 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if topk is not None and topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        self.kind, self.tau, self.topk = kind, tau, topk

    def forward(self, new: torch.Tensor, old: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        old = old.detach()
        neg = labels[:, None] != labels[None, :]  # B \ p(x): other classes only
        n2o = new @ old.T / self.tau
        pos = n2o.diagonal()[:, None]
        parts = [pos, _negatives(n2o, neg, self.topk)]
        if self.kind == "ract":
            parts.append(_negatives(new @ new.T / self.tau, neg, self.topk))
        return (torch.logsumexp(torch.cat(parts, dim=1), dim=1) - pos[:, 0]).mean()


def bct_loss(new: torch.Tensor, labels: torch.Tensor, old_w: torch.Tensor, old_b: torch.Tensor) -> torch.Tensor:
    """BCT (Shen et al. 2020): the new embedding classified by the frozen old classifier (W, b)."""
    return F.cross_entropy(new @ old_w.detach().T + old_b.detach(), labels)


@torch.no_grad()
def extend_old_classifier(
    old_w: torch.Tensor, old_b: torch.Tensor, old_classes: torch.Tensor, class_means: dict[int, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """BCT's extension for classes the old model never saw: their rows become the (normalised)
    mean old-model feature of the class, at the typical norm and bias of the trained rows."""
    w, b = old_w.clone(), old_b.clone()
    seen = torch.zeros(len(b), dtype=torch.bool, device=b.device)
    seen[old_classes] = True
    norm = w[seen].norm(dim=1).mean()
    bias = b[seen].mean()
    for c, mean in class_means.items():
        if not seen[c]:
            w[c] = F.normalize(mean, dim=0) * norm
            b[c] = bias
    return w, b
