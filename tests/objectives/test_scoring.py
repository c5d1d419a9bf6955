"""The headline of metrics.json is the mean over subjects of per-subject figures (issue 15, item 1)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from foundation.objectives.scoring import HEADLINE, headline, is_subject_mean, pooled, selection_score, split_metrics


def _preds() -> dict:
    """Two subjects whose scores are each perfectly ranked but on different scales.

    Per subject the ranking is perfect (mAP 1), but subject b's probabilities are all above subject
    a's, so pooling their samples ranks b's negatives above a's positives (pooled mAP < 1).
    """
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=np.uint8)
    probs = np.array([[0.2, 0.1], [0.1, 0.2], [0.9, 0.8], [0.8, 0.9]], dtype=np.float32)
    return {"ds": {"probs": probs, "labels": labels, "subjects": ["ds/a", "ds/a", "ds/b", "ds/b"]}}


def test_headline_is_the_mean_over_subjects_and_pooled_is_kept() -> None:
    m = split_metrics(_preds())
    assert m["headline"] == HEADLINE and is_subject_mean(m)
    assert m["per_subject"]["ds/a"]["mAP"] == pytest.approx(1.0)
    assert m["per_subject"]["ds/b"]["mAP"] == pytest.approx(1.0)
    assert m["mAP"] == pytest.approx(1.0)  # mean of the two subjects
    assert m["pooled"]["mAP"] < 0.9  # all four samples scored together
    assert m["per_dataset"]["ds"]["mAP"] == pytest.approx(1.0)
    assert m["per_dataset"]["ds"]["pooled"]["mAP"] == pytest.approx(m["pooled"]["mAP"])
    assert m["n"] == 4 and m["n_subjects"] == 2 and m["per_dataset"]["ds"]["n_subjects_scored"] == 2
    assert m["per_subject"]["ds/a"]["chance_mAP"] == pytest.approx(0.5)


def test_train_metrics_use_the_subject_mean() -> None:
    from foundation.objectives.scoring import metrics_from_predictions

    m = metrics_from_predictions(_preds(), {})
    assert m["mAP"] == pytest.approx(np.mean([s["mAP"] for s in m["per_subject"].values()]))
    assert m["mAP"] != pytest.approx(m["pooled"]["mAP"])


def test_several_datasets_average_the_per_dataset_subject_means() -> None:
    p = _preds()
    q = {"probs": np.array([[0.9, 0.1], [0.1, 0.9], [0.1, 0.9]], np.float32),
         "labels": np.array([[1, 0], [0, 1], [1, 0]], np.uint8), "subjects": ["other/x", "other/x", "other/y"]}
    m = split_metrics({**p, "other": q})
    per = m["per_dataset"]
    assert per["other"]["mAP"] == pytest.approx(np.mean([m["per_subject"]["other/x"]["mAP"],
                                                          m["per_subject"]["other/y"]["mAP"]]))
    assert m["mAP"] == pytest.approx((per["ds"]["mAP"] + per["other"]["mAP"]) / 2)


def test_selection_prefers_the_subject_mean_and_never_nan() -> None:
    good_for_subjects = split_metrics(_preds())
    assert selection_score(good_for_subjects) == pytest.approx(1.0)
    assert selection_score({"mAP": math.nan}) == -math.inf


def test_old_metrics_json_stays_readable(tmp_path) -> None:
    """A metrics.json written before the rule: pooled figures at the top, no 'headline' key."""
    old = {"mAP": 0.5, "AUC": 0.6, "hamming": 0.2, "chance_mAP": 0.3, "n": 4,
           "per_dataset": {"ds": {"mAP": 0.5, "AUC": 0.6, "hamming": 0.2, "n": 4}},
           "per_subject": {"ds/a": {"mAP": 0.8, "AUC": 1.0, "hamming": 0.1},
                           "ds/b": {"mAP": 0.6, "AUC": 1.0, "hamming": 0.1}}}
    assert not is_subject_mean(old)
    assert headline(old) == pytest.approx(0.7)  # recomputed from per_subject
    assert pooled(old) == 0.5 and pooled(old["per_dataset"]["ds"]) == 0.5
    new = split_metrics(_preds())
    assert headline(new) == new["mAP"] and pooled(new) == new["pooled"]["mAP"]


def test_cli_summary_names_the_rule(tmp_path, capsys) -> None:
    from foundation.cli import _print_summary

    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"test": split_metrics(_preds()), "best_step": 3}, default=float))
    _print_summary(path)
    out = capsys.readouterr().out
    assert "mean over subjects" in out and "pooled test mAP" in out
    path.write_text(json.dumps({"test": {"mAP": 0.5, "AUC": 0.5, "hamming": 0.1, "chance_mAP": 0.2},
                                "best_step": 3}))
    _print_summary(path)
    assert "pooled over subjects" in capsys.readouterr().out
