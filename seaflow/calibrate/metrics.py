"""How well scores separate two labels: AUC, ROC and the best threshold (torchmetrics), and
per-class score distributions."""

from __future__ import annotations

import torch
from torchmetrics.functional.classification import binary_auroc, binary_roc

UNFIT_BELOW = 0.6
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _ranked(scores, labels) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(preds in [0, 1], labels, distinct scores ascending)``: each score replaced by the rank of
    its value among the distinct values, which keeps the order and the ties (torchmetrics would
    squash scores outside [0, 1] with a sigmoid, and large ones would tie)."""
    values, inverse = torch.unique(torch.as_tensor(scores, dtype=torch.float64).flatten(), return_inverse=True)
    preds = inverse.double() / max(len(values) - 1, 1)
    return preds, torch.as_tensor(labels).long().flatten(), values


def auc(scores, labels) -> float:
    """Area under the ROC curve: the probability that a random label-1 row scores above a random
    label-0 row, ties counting one half (NaN without both labels)."""
    preds, target, _ = _ranked(scores, labels)
    if not 0 < int(target.sum()) < len(target):
        return float("nan")
    return float(binary_auroc(preds, target))


def best_threshold(scores, labels) -> tuple[float, float]:
    """``(accuracy, threshold)`` of the best rule "label 1 iff score > threshold" (a point of the ROC
    curve; among equally accurate rules the one predicting label 1 most often). The threshold lies
    halfway between neighbouring distinct scores (1 below the lowest, 0.5 above the highest)."""
    preds, target, values = _ranked(scores, labels)
    positives = int(target.sum())
    negatives = len(target) - positives
    fpr, tpr, _ = binary_roc(preds, target)
    # point k > 0 predicts label 1 for the k highest distinct scores; point 0 for none
    correct = (tpr.double() * positives).round() + negatives - (fpr.double() * negatives).round()
    k = int((correct == correct.max()).nonzero().max())
    values = values.flip(0).tolist()  # descending
    if k == len(values):
        threshold = values[-1] - 1.0
    elif k == 0:
        threshold = values[0] + 0.5
    else:
        threshold = (values[k] + values[k - 1]) / 2
    return int(correct[k]) / len(target), threshold


def distribution(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    out = {"n": len(values), "mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0,
           "min": float(t.min()), "max": float(t.max())}
    for q in QUANTILES:
        out[f"q{int(q * 100):02d}"] = float(torch.quantile(t, q))
    return out


def summarise(scores: list[float], labels: list[int]) -> dict:
    """AUC, best-threshold accuracy and per-class distributions of ``scores``."""
    area = auc(scores, labels)
    accuracy, threshold = best_threshold(scores, labels)
    return {
        "auc": area,
        "accuracy_at_best_threshold": accuracy,
        "best_threshold": threshold,
        "verdict": "fit" if area >= UNFIT_BELOW else "unfit",
        "label_1": distribution([s for s, y in zip(scores, labels) if y == 1]),
        "label_0": distribution([s for s, y in zip(scores, labels) if y == 0]),
    }
