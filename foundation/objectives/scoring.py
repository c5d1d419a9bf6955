"""The figures of one split as ``metrics.json`` reports them, and the number a run is selected on.

The paper reports per-subject results (its code tests each subject separately) and so does
``foundation bench``: the **headline** ``mAP`` / ``AUC`` / ``hamming`` / ``chance_mAP`` of a split are
the mean over subjects of each subject's own figure, per dataset; with several datasets, the mean over
datasets of those per-dataset means (so a dataset with 158 subjects does not drown one with 8).  The
best checkpoint is chosen on the headline validation mAP (:func:`selection_score`).

Scoring every subject's samples together is kept, named ``pooled`` (top level and per dataset).  A
subject whose figure is undefined (e.g. no positive label among its samples: NaN) is left out of the
mean, and ``n_subjects_scored`` says how many entered it.

``metrics.json`` written before this rule (no ``"headline"`` key) has the pooled figures at the top
level; :func:`headline` reads either kind, and :func:`pooled` finds the pooled figures of either.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from foundation.objectives.metrics import grouped_metrics, multilabel_metrics

__all__ = ["HEADLINE", "KEYS", "split_metrics", "metrics_from_predictions", "selection_score", "headline", "pooled",
           "is_subject_mean"]

#: the value of ``metrics.json`` ``<split>.headline`` for files written under this rule
HEADLINE = "subject_mean"
#: the figures averaged over subjects
KEYS = ("mAP", "AUC", "hamming", "chance_mAP")


def chance_map(labels: torch.Tensor) -> float:
    """mAP of a random ranking: the mean prevalence of the labels that have a positive. ``labels``: ``(N, C)``."""
    prevalence = labels.float().mean(0) if labels.shape[0] else labels.float().sum(0)
    return float(prevalence[prevalence > 0].mean()) if bool((prevalence > 0).any()) else math.nan


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def split_metrics(preds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Headline, pooled, per-dataset and per-subject figures of one split.

    Args:
        preds: dataset id -> ``{"probs": (N, C) array, "labels": (N, C) 0/1 array, "subjects": N names}``
            (subject names are ``dataset/subject``).

    Returns:
        ``{"mAP", "AUC", "hamming", "chance_mAP"`` (mean over datasets of the mean over subjects),
        ``"n"``, ``"n_subjects"``, ``"headline": "subject_mean"``, ``"pooled": {...}`` (mean over datasets
        of each dataset's all-samples figures), ``"per_dataset": {id: {headline figures, "n",
        "n_subjects", "n_subjects_scored", "pooled": {...}}}``, ``"per_subject": {subject: {...}}}``.
    """
    per_dataset: dict[str, dict[str, Any]] = {}
    per_subject: dict[str, dict[str, Any]] = {}
    for name, p in preds.items():
        probs, labels = torch.as_tensor(np.asarray(p["probs"])), torch.as_tensor(np.asarray(p["labels"])).int()
        whole = multilabel_metrics(probs, labels)
        whole["chance_mAP"] = chance_map(labels)
        subjects = list(p["subjects"])
        groups = grouped_metrics(probs, labels, subjects)
        names = np.asarray(subjects, dtype=object)
        for subject, m in groups.items():
            m["chance_mAP"] = chance_map(labels[torch.from_numpy(np.flatnonzero(names == subject))])
        per_subject.update(groups)
        entry: dict[str, Any] = {k: _mean([m[k] for m in groups.values()]) for k in KEYS}
        entry["n"] = whole["n"]
        entry["n_subjects"] = len(groups)
        entry["n_subjects_scored"] = sum(math.isfinite(m["mAP"]) for m in groups.values())
        entry["pooled"] = whole
        per_dataset[name] = entry
    out: dict[str, Any] = {k: _mean([d[k] for d in per_dataset.values()]) for k in KEYS}
    out["n"] = int(sum(d["n"] for d in per_dataset.values()))
    out["n_subjects"] = int(sum(d["n_subjects"] for d in per_dataset.values()))
    out["headline"] = HEADLINE
    out["pooled"] = {k: _mean([d["pooled"][k] for d in per_dataset.values()]) for k in ("mAP", "AUC", "hamming",
                                                                                       "chance_mAP")}
    out["pooled"]["n"] = out["n"]
    return {**out, "per_dataset": per_dataset, "per_subject": per_subject}


def metrics_from_predictions(preds: Mapping[str, Mapping[str, Any]], infos: Any = None) -> dict[str, Any]:
    """:func:`split_metrics` under the name the trainer and the SRM baseline call (``infos`` is unused)."""
    return split_metrics(preds)


def selection_score(metrics: Mapping[str, Any]) -> float:
    """The validation figure the best checkpoint is chosen on: the headline (subject-mean) mAP.

    NaN (no subject scorable) counts as ``-inf``, so it is never selected over a real score.
    """
    value = float(metrics["mAP"])
    return value if math.isfinite(value) else -math.inf


def is_subject_mean(split: Mapping[str, Any]) -> bool:
    """Whether a ``metrics.json`` split block was written under the subject-mean headline rule."""
    return split.get("headline") == HEADLINE


def headline(split: Mapping[str, Any], key: str = "mAP") -> float:
    """The subject-mean figure ``key`` of a ``metrics.json`` split block, old files included.

    Old files (no ``headline`` key) hold pooled figures at the top level; their subject mean is
    recomputed from ``per_subject`` (mean per dataset, then over datasets), as written today.
    """
    if is_subject_mean(split):
        return float(split[key])
    rows = split.get("per_subject")
    if not rows:
        raise KeyError(f"this metrics.json split has no per_subject figures to average ({key})")
    by_dataset: dict[str, list[float]] = {}
    for subject, m in rows.items():
        by_dataset.setdefault(subject.split("/", 1)[0], []).append(float(m.get(key, math.nan)))
    return _mean([_mean(v) for v in by_dataset.values()])


def pooled(block: Mapping[str, Any], key: str = "mAP") -> float:
    """The all-samples figure ``key`` of a split block or of one ``per_dataset`` entry, old files included."""
    if "pooled" in block:
        return float(block["pooled"][key])
    return float(block[key])  # written before the subject-mean rule: the top-level figures were pooled
