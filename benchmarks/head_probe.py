"""Benchmark (not a test): does starting the label head at a linear probe help the aligned network? (RESULTS §4o)

Why asked: trained from a random head, the aligned networks end *below* the linear read-out of their own inputs
(the volume world's aligned CLIP-MUSED with a linear head 0.466 / 0.563 test mAP against one ridge over the
aligned subjects' 0.496 / 0.613 on world seeds 1 / 2; ``recipes/hcp_aligned.yaml`` on planted HCP 0.624 / 0.605
against its alignment's pooled read-out 0.669 / 0.636).  Linear probing, then fine-tuning (LP-FT: Kumar et al.
2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution") starts the head at a
closed-form read-out of the initial features, so the first steps move the features for a head that already reads
them.

What it runs, per seed, in-process through the package's :class:`~foundation.engine.trainer.Trainer` (the recipe
and overrides as ``foundation bench`` gives its ``aligned-lin-clip-mused`` method, a linear head): before step 1,
every training sample goes once through the model as built (eval mode) and the inputs of its dataset's linear
label head are kept, ``(n, R · D)``; per label an L2 logistic regression on the standardised features
(scikit-learn's objective, every label at once by L-BFGS; ``C`` from :data:`PROBE_CS` by the subject-mean
validation mAP, as the linear baselines choose theirs), folded into the head's weight and bias; the model as built
is then scored on validation as step 0 and saved as ``best/``, so the run keeps it unless training beats it on
validation.  Training, selection and ``metrics.json`` are the trainer's own.  With ``--reference BENCH_DIR`` (a
``foundation bench`` output folder's dataset folder holding ``<method>-seed<S>/metrics.json``), each seed's
per-subject test mAP is compared with that method's (paired over seed x subject). ::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/head_probe.py recipes/synthetic_volume.yaml \
        model.tokens=subject model.alignment=guidance-ridge model.head=linear \
        train.lr=3e-4 train.steps=800 train.eval_every=50 train.checkpoint_every=50 \
        --seeds 0 1 2 --out runs/head-probe-world0 --reference runs/net-world0/synthetic_volume

The package does not ship it as an option: on the three volume worlds it was aimed at it lowered test mAP
(RESULTS §4o), and a new recipe field would change every recipe's hash.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn



#: inverse L2 strength grid of the probe's logistic regressions (standardised features)
PROBE_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))


@torch.no_grad()
def probe_features(model: nn.Module, head: nn.Linear, batches: Iterable[Any],
                   forward: Callable[[nn.Module, Any], Any], *, keep: set[str] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The inputs of ``head`` over ``batches`` (the model in eval mode), float64.

    Args:
        model: the model ``forward(model, batch)`` runs.
        head: the label head's ``nn.Linear``: its inputs are recorded by a forward pre-hook.
        batches: :class:`~foundation.data.loader.Batch` es on the model's device.
        keep: sample keys to keep (``train_fraction``); ``None``: all.

    Returns:
        ``(features (n, R · D), labels (n, C), subjects (n,))``.
    """
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    xs, ys, subjects = [], [], []
    try:
        for batch in batches:
            rows = [i for i, k in enumerate(batch.keys) if keep is None or k in keep]
            if not rows:
                continue
            seen.clear()
            forward(model, batch)
            x = seen[-1].numpy().astype(np.float64)
            xs.append(x[rows])
            ys.append(batch.labels.float().cpu().numpy()[rows])
            subjects += ["/".join(batch.keys[i].split("/")[:2]) for i in rows]
    finally:
        hook.remove()
        model.train(was_training)
    if not xs:
        raise SystemExit("no training sample to fit the probe on")
    return np.concatenate(xs), np.concatenate(ys), subjects


def _logistic(x: torch.Tensor, y: torch.Tensor, c: float, start: tuple[torch.Tensor, torch.Tensor] | None,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Every label's L2 logistic regression at once, scikit-learn's objective (``C · Σ log-loss + ½ ‖w‖²``, bias
    unpenalised) divided by ``C · n``; full-batch L-BFGS, float64, from ``start`` (the previous ``C``'s solution)."""
    n, features = x.shape
    weight = torch.zeros(y.shape[1], features, dtype=x.dtype) if start is None else start[0].clone()
    bias = torch.zeros(y.shape[1], dtype=x.dtype) if start is None else start[1].clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(x @ weight.T + bias, y, reduction="sum")
                + 0.5 / c * (weight ** 2).sum()) / n
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(x: np.ndarray, y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, val_subjects: list[str], *,
              cs: tuple[float, ...] = PROBE_CS) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Per label an L2 logistic regression from the features to the labels; ``C`` chosen on validation.

    Args:
        x: ``(n, F)`` training features; ``y``: ``(n, C)`` their 0/1 labels.
        val_x, val_y, val_subjects: the validation samples', and who each belongs to (the score is the mean over
            subjects of each subject's mAP, the headline rule).
        cs: the grid of ``C`` (fitted from the strongest penalty down, each from the previous solution).

    Returns:
        ``(weight (C, F), bias (C,), info)`` with ``x @ weight.T + bias`` the logits on the *raw* features (the
        standardisation folded in).  A label never (or always) on in training is driven toward the bias alone by
        the penalty, as in any L2 logistic regression.  ``info``: the chosen ``C`` and its validation mAP.
    """
    from foundation.objectives.metrics import multilabel_metrics

    mean, std = x.mean(0), x.std(0) + 1e-6
    xs = torch.from_numpy((x - mean) / std)
    vs = torch.from_numpy((val_x - mean) / std)
    targets, labels = torch.from_numpy(y.astype(np.float64)), torch.from_numpy(val_y).int()
    names = np.asarray(val_subjects, dtype=object)
    groups = [torch.from_numpy(np.flatnonzero(names == s)) for s in dict.fromkeys(val_subjects)]
    best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None
    fit = None
    for c in sorted(cs):
        fit = _logistic(xs, targets, c, fit)
        probs = torch.sigmoid(vs @ fit[0].T + fit[1])
        score = float(np.nanmean([multilabel_metrics(probs[g], labels[g])["mAP"] for g in groups]))
        if best is None or (np.isfinite(score) and score > best[0]):
            best = (score, c, *fit)
    score, c, weight, bias = best
    raw_weight = weight.numpy() / std  # (C, F)
    return raw_weight, bias.numpy() - raw_weight @ mean, {"C": c, "val_mAP": score}


def start_from_probe(trainer) -> dict[str, dict[str, float]]:
    """Set every dataset's linear label head of ``trainer``'s model (built, not yet trained) to the probe, then score
    the model on validation as step 0 and save it as ``best/`` (one process); returns the probe per dataset."""
    from foundation.engine.checkpoint import save_model
    from foundation.objectives.scoring import selection_score

    acc, core, report = trainer.accelerator, trainer.core, {}

    def forward(model, batch):
        with acc.autocast():
            return trainer._forward(model, batch)

    def batches(stream, split):
        return (b.to(acc.device) for b in stream.eval_batches(split, trainer.recipe.train.eval_batch_size))

    for name, stream in trainer.streams.items():
        t0 = time.perf_counter()
        _, head = core.head_for(name)
        linear = head[-1]
        if not isinstance(linear, torch.nn.Linear) or len(head) != 2:
            raise SystemExit(f"{name}: the probe sets a linear label head (model.head=linear), got {head}")
        keep = (None if stream.train_fraction >= 1.0
                else {k for keys in stream.train_keys().values() for k in keys})
        x, y, _ = probe_features(core, linear, batches(stream, "train"), forward, keep=keep)
        vx, vy, vs = probe_features(core, linear, batches(stream, "val"), forward)
        weight, bias, info = fit_probe(x, y, vx, vy, vs)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(weight))
            linear.bias.copy_(torch.from_numpy(bias))
        report[name] = {**info, "n": len(x), "seconds": time.perf_counter() - t0}
    metrics = trainer.evaluate("val")
    trainer.state.best_score, trainer.state.best_step = selection_score(metrics), 0
    trainer.state.history.append({"step": 0, "val_mAP": metrics["mAP"], "val_AUC": metrics["AUC"],
                                  "val_pooled_mAP": metrics["pooled"]["mAP"]})
    save_model(core, trainer.run_dir / "best", meta={"step": 0, "val": metrics, "head": "probe"})
    return report


def _per_subject(path: Path) -> dict[str, float]:
    """``{subject: test mAP}`` of a run's ``metrics.json``."""
    from _runs import subject_maps

    return subject_maps(json.loads(path.read_text())["test"])


def _history(run: Path) -> list[dict[str, Any]]:
    """The validation history in the run's last checkpoint (step 0 is the model with the probe's head)."""
    from foundation.engine.checkpoint import read_state

    last = sorted((run / "checkpoints").glob("step-*"))
    return read_state(last[-1])["history"] if last else []


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--reference", type=Path, help="a bench output's dataset folder to compare with")
    p.add_argument("--method", default="aligned-lin-clip-mused", help="the reference method's runs")
    a = p.parse_args(argv)

    from _runs import paired_summary

    from foundation.core.recipe import load_recipe
    from foundation.engine.trainer import Trainer

    ours: dict[int, dict[str, float]] = {}
    for seed in a.seeds:
        run = a.out / f"probe-seed{seed}"
        recipe = load_recipe(a.recipe, [*a.overrides, f"seed={seed}", f"run.dir={run}"])
        if not (run / "metrics.json").is_file():
            t0 = time.perf_counter()
            trainer = Trainer(recipe, progress=False)
            try:
                report = {} if trainer.resume() else start_from_probe(trainer)
                trainer.fit()
                trainer.test()
            finally:
                trainer.close()
            if report:
                (run / "probe.json").write_text(json.dumps(report, indent=1) + "\n")
            print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
        m = json.loads((run / "metrics.json").read_text())
        probe = json.loads((run / "probe.json").read_text()) if (run / "probe.json").is_file() else {}
        ours[seed] = _per_subject(run / "metrics.json")
        first = next((h for h in _history(run) if h["step"] == 0), None)
        probes = ", ".join(f"{d}: C {v['C']:.3g} val mAP {v['val_mAP']:.4f} on {v['n']} samples"
                           for d, v in probe.items())
        print(f"seed {seed}: test mAP {m['test']['mAP']:.4f} (subject mean), best step {m['best_step']}; step 0 val "
              f"mAP {first['val_mAP'] if first else float('nan'):.4f}, the probe's {probes}", flush=True)
    if a.reference:
        pairs = []
        for seed, subjects in ours.items():
            theirs = _per_subject(a.reference / f"{a.method}-seed{seed}" / "metrics.json")
            pairs += [(subjects[s], theirs[s]) for s in subjects if math.isfinite(subjects[s] + theirs[s])]
        print(f"probe head vs {a.method} ({a.reference}): {paired_summary(pairs, 'seed x subject')}")
    print(f"rerun: {Path(sys.executable).name} {' '.join(sys.argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
