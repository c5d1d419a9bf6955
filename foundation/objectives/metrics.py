"""Multi-label evaluation metrics of the paper (Sec. 3): mAP, AUC and Hamming distance.

mAP and AUC are macro averages over the labels that can be scored on the given samples: a label
needs at least one positive for average precision, and at least one positive *and* one negative
for ROC AUC.  Labels that cannot be scored are left out of the average (not counted as 0 or 1),
so per-subject numbers on small groups stay meaningful.  Hamming distance is the fraction of
wrong label decisions with ``prob > 0.5`` predicting positive (micro average).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_hamming_distance,
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_hamming_distance,
)

__all__ = ["multilabel_metrics", "grouped_metrics", "metrics_from_predictions"]

THRESHOLD = 0.5


def _masked_mean(values: Tensor, mask: Tensor) -> float:
    return float(values[mask].mean()) if bool(mask.any()) else math.nan


def multilabel_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Score predicted probabilities against multi-hot labels.

    Args:
        probs: ``(N, C)`` probabilities in ``[0, 1]`` (apply a sigmoid to logits first).
        labels: ``(N, C)`` multi-hot 0/1.

    Returns:
        ``{"mAP", "AUC", "hamming", "n", "n_labels_scored", "n_labels_scored_auc"}``; ``mAP``/``AUC``
        are NaN when no label can be scored (and everything but ``n`` is NaN when ``N == 0``).
    """
    if probs.dim() != 2 or probs.shape != labels.shape:
        raise ValueError(
            f"probs and labels must both be (N, C), got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    probs = probs.detach().float().cpu()
    labels = labels.detach().cpu()
    n, c = probs.shape
    if n == 0 or c == 0:
        return {"mAP": math.nan, "AUC": math.nan, "hamming": math.nan, "n": n,
                "n_labels_scored": 0, "n_labels_scored_auc": 0}
    if bool(((probs < 0) | (probs > 1) | probs.isnan()).any()):
        # torchmetrics would silently apply a sigmoid to out-of-range "probabilities"
        raise ValueError("probs must be probabilities in [0, 1] (did you pass logits?)")
    if bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError("labels must be 0/1")
    target = labels.long()

    has_pos = target.sum(0) > 0
    has_neg = (1 - target).sum(0) > 0
    with warnings.catch_warnings():  # unscorable labels warn; they are excluded below
        warnings.simplefilter("ignore", UserWarning)
        if c == 1:  # torchmetrics' multilabel functions need num_labels >= 2
            p1, t1 = probs[:, 0], target[:, 0]
            ap = binary_average_precision(p1, t1).reshape(1)
            auc = binary_auroc(p1, t1).reshape(1)
            hamming = binary_hamming_distance(p1, t1, threshold=THRESHOLD)
        else:
            ap = multilabel_average_precision(probs, target, num_labels=c, average="none")
            auc = multilabel_auroc(probs, target, num_labels=c, average="none")
            hamming = multilabel_hamming_distance(
                probs, target, num_labels=c, threshold=THRESHOLD, average="micro"
            )
    return {
        "mAP": _masked_mean(ap, has_pos),
        "AUC": _masked_mean(auc, has_pos & has_neg),
        "hamming": float(hamming),
        "n": n,
        "n_labels_scored": int(has_pos.sum()),
        "n_labels_scored_auc": int((has_pos & has_neg).sum()),
    }


def grouped_metrics(probs: Tensor, labels: Tensor, groups: Sequence[str]) -> dict[str, dict[str, float]]:
    """:func:`multilabel_metrics` per group (e.g. per subject), keyed by group in sorted order.

    Args:
        probs: ``(N, C)`` probabilities.
        labels: ``(N, C)`` multi-hot.
        groups: ``N`` group names, one per sample.
    """
    if len(groups) != probs.shape[0]:
        raise ValueError(f"{len(groups)} group names for {probs.shape[0]} samples")
    names = np.asarray(list(groups), dtype=object)
    out: dict[str, dict[str, float]] = {}
    for g in sorted(set(names.tolist())):
        rows = torch.from_numpy(np.flatnonzero(names == g))
        out[g] = multilabel_metrics(probs[rows.to(probs.device)], labels[rows.to(labels.device)])
    return out


def metrics_from_predictions(preds: dict[str, dict[str, Any]], infos: dict[str, Any]) -> dict[str, Any]:
    """Overall (mean over datasets), per-dataset and per-subject mAP / AUC / Hamming."""
    per_dataset, per_subject = {}, {}
    for name, p in preds.items():
        probs, labels = torch.from_numpy(p["probs"]), torch.from_numpy(p["labels"]).int()
        m = multilabel_metrics(probs, labels)
        prevalence = labels.float().mean(0)
        m["chance_mAP"] = float(prevalence[prevalence > 0].mean()) if (prevalence > 0).any() else float("nan")
        per_dataset[name] = m
        per_subject.update(grouped_metrics(probs, labels, p["subjects"]))
    keys = ("mAP", "AUC", "hamming", "chance_mAP")
    overall = {k: float(np.mean([m[k] for m in per_dataset.values()])) for k in keys}
    overall["n"] = int(sum(m["n"] for m in per_dataset.values()))
    return {**overall, "per_dataset": per_dataset, "per_subject": per_subject}
