"""The classification task for the engine: the training step and top-1/top-5 evaluation."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import DistContext, all_reduce_sum


def classification_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor],
                        label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:  # fmt: skip
    """Cross-entropy loss (against labels smoothed by ``label_smoothing``, Szegedy et al. 2016; 0 in the paper),
    plus the batch's top-1 error (the paper's training-error curves)."""
    images, labels = batch
    logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    error = (logits.argmax(dim=1) != labels).float().mean()
    return {"loss": loss, "error": error}


def topk_errors(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, torch.Tensor]:
    """Number of samples whose label is not among the top-k scores, for each k (k capped at #classes)."""
    max_k = min(max(ks), scores.shape[1])
    top = scores.topk(max_k, dim=1).indices
    hits = top == labels[:, None]
    return {k: (~hits[:, : min(k, max_k)].any(dim=1)).sum() for k in ks}


@torch.no_grad()
def evaluate_classifier(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        ctx: DistContext | None = None) -> dict[str, float]:  # fmt: skip
    """Top-1/top-5 error (percent) and mean loss over batches, summed over all processes."""
    ctx = ctx or DistContext()
    device = ctx.device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # top1 wrong, top5 wrong, loss sum, count
    was_training = model.training
    model.eval()
    for images, labels in batches:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images).float()
        wrong = topk_errors(logits, labels)
        totals += torch.stack([wrong[1], wrong[5], F.cross_entropy(logits, labels, reduction="sum"),
                               torch.tensor(len(labels), device=device)]).to(torch.float64)  # fmt: skip
    model.train(was_training)
    top1, top5, loss, count = all_reduce_sum(totals, ctx).tolist()
    if count == 0:
        raise ValueError("evaluation data is empty")
    return {"top1_err": 100 * top1 / count, "top5_err": 100 * top5 / count, "loss": loss / count, "images": count}
