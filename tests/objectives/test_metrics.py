"""Multi-label metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foundation.objectives.metrics import grouped_metrics, multilabel_metrics


def test_perfect_ranking_scores_one():
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.3, 0.4]])
    m = multilabel_metrics(probs, labels)
    assert m["mAP"] == pytest.approx(1.0) and m["AUC"] == pytest.approx(1.0)
    assert m["hamming"] == 0.0 and m["n"] == 4 and m["n_labels_scored"] == 2


def test_hand_ranking_ap_and_auc():
    # scores 0.9 0.8 0.7 0.6 with labels 1 0 1 0:
    # AP = mean precision at each positive = (1/1 + 2/3) / 2 = 5/6
    # AUC = fraction of (pos, neg) pairs ranked right: (0.9>0.8, 0.9>0.6, 0.7<0.8, 0.7>0.6) = 3/4
    probs = torch.tensor([[0.9], [0.8], [0.7], [0.6]])
    labels = torch.tensor([[1], [0], [1], [0]])
    m = multilabel_metrics(probs, labels)
    assert m["mAP"] == pytest.approx(5 / 6)
    assert m["AUC"] == pytest.approx(3 / 4)
    # decisions > 0.5: all four predicted positive, two are negatives -> 2/4 wrong
    assert m["hamming"] == pytest.approx(0.5)


def test_labels_without_positives_are_excluded():
    probs = torch.tensor([[0.9, 0.9, 0.2], [0.8, 0.1, 0.7], [0.7, 0.3, 0.6], [0.6, 0.8, 0.9]])
    labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]])
    # label 0: AP 5/6, AUC 3/4 (as above); label 1: no positive -> excluded from both;
    # label 2: all positive -> AP 1 (counted), AUC undefined (excluded)
    m = multilabel_metrics(probs, labels)
    assert m["mAP"] == pytest.approx((5 / 6 + 1) / 2)
    assert m["AUC"] == pytest.approx(3 / 4)
    assert m["n_labels_scored"] == 2 and m["n_labels_scored_auc"] == 1


def test_hamming_counts_wrong_decisions():
    probs = torch.tensor([[0.9, 0.5, 0.1], [0.4, 0.6, 0.51], [0.2, 0.2, 0.2], [0.7, 0.3, 0.8]])
    labels = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]])
    # wrong: (0,1) 0.5 is not > 0.5 but label 1; (1,2) 0.51 -> 1 but label 0; (2,2) 0.2 -> 0 but label 1
    m = multilabel_metrics(probs, labels)
    assert m["hamming"] == pytest.approx(3 / 12)


def test_no_valid_labels_gives_nan_not_crash():
    m = multilabel_metrics(torch.tensor([[0.2, 0.7], [0.1, 0.4]]), torch.zeros(2, 2))
    assert math.isnan(m["mAP"]) and math.isnan(m["AUC"])
    assert m["hamming"] == pytest.approx(1 / 4) and m["n_labels_scored"] == 0
    empty = multilabel_metrics(torch.zeros(0, 3), torch.zeros(0, 3))
    assert empty["n"] == 0 and math.isnan(empty["mAP"])


def test_logits_are_rejected():
    with pytest.raises(ValueError, match="logits"):
        multilabel_metrics(torch.tensor([[2.5, -1.0]]), torch.tensor([[1, 0]]))


def test_grouped_metrics_per_subject():
    probs = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.1], [0.9]])
    labels = torch.tensor([[1], [0], [1], [0], [1], [0]])
    groups = ["nsd/s1", "nsd/s1", "nsd/s1", "nsd/s1", "nsd/s2", "nsd/s2"]
    g = grouped_metrics(probs, labels, groups)
    assert list(g) == ["nsd/s1", "nsd/s2"]
    assert g["nsd/s1"]["mAP"] == pytest.approx(5 / 6) and g["nsd/s1"]["n"] == 4
    # s2: one positive scored 0.1 below one negative scored 0.9 -> AP 1/2, AUC 0, both wrong
    assert g["nsd/s2"]["mAP"] == pytest.approx(1 / 2)
    assert g["nsd/s2"]["AUC"] == pytest.approx(0.0)
    assert g["nsd/s2"]["hamming"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        grouped_metrics(probs, labels, groups[:-1])


def test_matches_scikit_learn_with_ties_and_unscorable_labels():
    """mAP / AUC are the macro means of scikit-learn's ``average_precision_score`` / ``roc_auc_score`` over
    the scorable labels, on random data with many tied scores (the vectorised ranking must break ties
    as they do)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    for trial in range(60):
        n, c = int(rng.integers(2, 50)), int(rng.integers(1, 9))
        y = (rng.random((n, c)) < rng.uniform(0.05, 0.9)).astype(np.int64)
        p = rng.random((n, c)).astype(np.float32)
        if trial % 2:
            p = np.round(p, 1)  # ties within and across classes
        m = multilabel_metrics(torch.from_numpy(p), torch.from_numpy(y))
        pos = [j for j in range(c) if y[:, j].any()]
        both = [j for j in pos if not y[:, j].all()]
        want_ap = np.mean([average_precision_score(y[:, j], p[:, j]) for j in pos]) if pos else math.nan
        want_auc = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in both]) if both else math.nan
        assert m["mAP"] == pytest.approx(want_ap, abs=1e-9, nan_ok=True), trial
        assert m["AUC"] == pytest.approx(want_auc, abs=1e-9, nan_ok=True), trial
        assert m["hamming"] == pytest.approx(((p > 0.5) != (y == 1)).mean()), trial
        assert (m["n_labels_scored"], m["n_labels_scored_auc"]) == (len(pos), len(both))
