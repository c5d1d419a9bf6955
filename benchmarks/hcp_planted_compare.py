"""Paired comparison of the runs ``benchmarks/hcp_planted.py`` left in its world folders (a benchmark report).

    .venv/bin/python benchmarks/hcp_planted_compare.py /tmp/s20/planted/world-235a1bc6 /tmp/s21/planted/world-b4ac606b \\
        --where train.shuffle_buffer=4096 train.steps=1500 train.batch_size=64

For every world folder: the linear rows (``linear-*/metrics.json``) and every training run (``train-*``) whose
``config.yaml`` matches ``--where`` (dotted keys), grouped by ``model.alignment`` and ``model.head`` with one
entry per ``seed``.  Each group's per-subject test mAP is compared with one ridge per subject over the
(seed, subject) pairs (two-sided paired t-test; Holm over the trained groups of all worlds), and per subject
over the seed means.  Prints what it measured; nothing is chosen here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

from foundation.objectives.stats import holm, paired_ttest


def _get(config: dict, dotted: str):
    for part in dotted.split("."):
        config = config.get(part, {}) if isinstance(config, dict) else {}
    return config


def _per_subject(path: Path) -> dict[str, tuple[float, float]]:
    per = json.loads(path.read_text())["test"]["per_subject"]
    return {k: (v["mAP"], v["AUC"]) for k, v in per.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("worlds", nargs="+", type=Path)
    p.add_argument("--where", nargs="*", default=[], help="key=value filters on the training runs' config.yaml")
    args = p.parse_args()
    where = [w.split("=", 1) for w in args.where]
    tests = []
    for world in args.worlds:
        groups: dict[str, list[dict]] = {}
        for lin in sorted(world.glob("linear-*/metrics.json")):
            groups[lin.parent.name] = [_per_subject(lin)]
        for run in sorted(world.glob("train-*/metrics.json")):
            config = yaml.safe_load((run.parent / "config.yaml").read_text())
            if any(str(_get(config, k)) != v for k, v in where):
                continue
            name = f"CLIP-MUSED alignment={_get(config, 'model.alignment')} head={_get(config, 'model.head')}"
            groups.setdefault(name, []).append(_per_subject(run))
        ref = groups["linear-ridge"][0]
        subjects = sorted(ref)
        ref_map = np.array([ref[s][0] for s in subjects])
        print(f"{world.name}:")
        for name, runs in groups.items():
            m = np.array([[r[s][0] for s in subjects] for r in runs])
            a = np.array([[r[s][1] for s in subjects] for r in runs])
            line = f"  {name:58s} runs {len(runs)}  test mAP {m.mean():.4f} ± {m.mean(1).std():.4f}  AUC {a.mean():.4f}"
            if name != "linear-ridge":
                diff = (m - ref_map).ravel()
                _, pval = paired_ttest(m.ravel(), np.tile(ref_map, len(runs)))
                better = int((m.mean(0) > ref_map).sum())
                line += (f"  Δ mAP vs ridge {diff.mean():+.4f} (n = {len(diff)} run×subject pairs, p = {pval:.2g}; "
                         f"seed mean better on {better} of {len(subjects)} subjects)")
                if name.startswith("CLIP-MUSED"):
                    tests.append((pval, f"{world.name} {name}"))
            print(line)
    print("Holm over the trained groups:")
    tests.sort()
    for (pval, name), adjusted in zip(tests, holm([t[0] for t in tests])):
        print(f"  {name}: p = {pval:.2g}, Holm-adjusted {adjusted:.2g}")
    print("rerun: .venv/bin/python benchmarks/hcp_planted_compare.py "
          + " ".join(str(w) for w in args.worlds) + (" --where " + " ".join(args.where) if args.where else ""))


if __name__ == "__main__":
    main()
