"""Benchmark (not a test): what keeps the 3-D ResNet patchifier from learning a planted HCP response?

On a planted world written by ``benchmarks/hcp_planted.py`` (its ``--out`` folder ``world-<key>``: the HCP
tree and its shards), one subject, in-process: the repository's ``ResNetVolumeAdapter`` (the recipe's stages,
``--channels``; its ``post`` stage included, no Transformer, no guidance) trained with BCE alone under each
combination of

* **input**: ``raw`` (the shard's voxels, min-max [0, 1] per voxel and run as the HCP plugin writes them:
  about 0.5 everywhere in the brain, 0 outside), ``centre`` (each voxel's training mean subtracted: the
  offset gone, the scale kept), ``standardize`` (``model.volume_input: standardize``, the adapter's own
  per-sample standardisation of its in-mask voxels);
* **read-out** of the ``(B, C, *out_grid)`` feature map: ``tokens`` (one linear map over every token's
  channels: a weight per position), ``pool`` (the tokens averaged, then linear), ``attn`` (one learned query
  attending over the tokens plus learned positions, then linear: how the model's subject tokens read the
  patches), ``spatial`` (``model.volume_readout: spatial``'s :class:`~foundation.model.readout.SpatialReadout`:
  each token's channels reduced to 16, then a weight per position and reduced channel, then linear).

Every run uses the same seed, steps and batch; validation and test mAP / AUC (macro over the labels that
occur in the split) every ``--eval-every`` steps and at the best validation step. ::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume_readout_probe.py runs/hcp-planted/world-b7d3af01 \\
        --inputs raw centre standardize --readouts tokens pool attn --steps 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hcp_planted import data_overrides  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def probe(data: dict, pos, *, grid, channels: list[int], how: str, readout: str, steps: int, batch: int, lr: float,
          eval_every: int, seed: int, mixer: bool = False) -> list[tuple[int, float, tuple[float, float], tuple[float, float]]]:
    """Train one (input, read-out) pair; ``[(step, train loss, (val mAP, AUC), (test mAP, AUC))]``."""
    import torch
    from torch import nn

    from foundation.model.readout import SpatialReadout
    from foundation.model.volume_resnet import ResNetVolumeAdapter
    from foundation.objectives.metrics import multilabel_metrics

    x = {s: d.x for s, d in data.items()}
    if how == "centre":
        mean = x["train"].mean(0)
        x = {s: (v - mean).astype(np.float32) for s, v in x.items()}
    y = {s: d.y for s, d in data.items()}
    torch.manual_seed(seed)
    width = channels[-1]
    net = ResNetVolumeAdapter(grid, width, channels, standardize=how == "standardize", mixer=mixer)
    n_labels = y["train"].shape[1]
    head = nn.Linear(width * net.num_tokens if readout == "tokens" else width, n_labels)
    modules = nn.ModuleList([net, head])
    if readout == "spatial":  # model.volume_readout: spatial's map, then the linear head
        spatial = SpatialReadout(net.num_tokens, width, 1)
        modules.append(spatial)
    if readout == "attn":
        attn = nn.MultiheadAttention(width, 4, batch_first=True)
        norm = nn.LayerNorm(width)
        positions = nn.Parameter(torch.randn(1, net.num_tokens, width) * 0.02)
        query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        modules.extend([attn, norm])
    params = list(modules.parameters()) + ([positions, query] if readout == "attn" else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def logits(v: np.ndarray):
        t = torch.from_numpy(v)
        f = net.post(net.features(t, pos.expand(len(t), -1)))  # (B, C, *out_grid)
        if readout == "tokens":
            return head(f.flatten(1))
        if readout == "pool":
            return head(f.mean((2, 3, 4)))
        if readout == "spatial":
            return head(spatial(net.tokens(f))[:, 0])
        tok = norm(net.tokens(f) + positions)  # (B, T, C)
        return head(attn(query.expand(len(tok), -1, -1), tok, tok, need_weights=False)[0][:, 0])

    def score(split: str) -> tuple[float, float]:
        """Macro mAP and AUC over the labels the split can score (the project's own metric)."""
        modules.eval()
        with torch.no_grad():
            p = torch.cat([torch.sigmoid(logits(x[split][i:i + 32])) for i in range(0, len(x[split]), 32)])
        modules.train()
        m = multilabel_metrics(p, torch.from_numpy(y[split]))
        return m["mAP"], m["AUC"]

    rng = np.random.default_rng(seed)
    bce = nn.BCEWithLogitsLoss()
    rows, smooth = [], 0.0
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(x["train"]), batch)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / max(1, steps // 10))  # linear warm-up over a tenth of the steps
        loss = bce(logits(x["train"][idx]), torch.from_numpy(y["train"][idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        smooth = loss.item() if step == 1 else 0.9 * smooth + 0.1 * loss.item()
        if step % eval_every == 0:
            rows.append((step, smooth, score("val"), score("test")))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("world", type=Path, help="a world-<key> folder written by benchmarks/hcp_planted.py")
    p.add_argument("--subject", type=int, default=0, help="which subject (index into the shard's subjects)")
    p.add_argument("--inputs", nargs="+", default=["raw", "centre", "standardize"],
                   choices=["raw", "centre", "standardize"])
    p.add_argument("--readouts", nargs="+", default=["tokens", "pool", "attn", "spatial"],
                   choices=["tokens", "pool", "attn", "spatial"])
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixer", action="store_true", help="the patchifier's position mixer (model.volume_mixer)")
    a = p.parse_args(argv)

    import torch

    from foundation.core.recipe import load_recipe
    from foundation.data.shards import find_shards
    from foundation.data.splits import read_split

    world = json.loads((a.world / "hcp" / "planted.json").read_text())
    recipe = load_recipe(REPO / "recipes" / "hcp.yaml",
                         data_overrides(a.world, subjects=world["subjects"], delay=world["delay"], val_seconds=60))
    index = find_shards(recipe)[recipe.datasets[0].id]
    subject = index.data["subjects"][a.subject]
    mask = index.mask(subject)
    pos = torch.from_numpy(np.flatnonzero(mask.reshape(-1))).long()
    data = {s: read_split(index, subject, s) for s in ("train", "val", "test")}
    print(f"world {a.world.name} {world}\nsubject {subject}: {len(data['train'].keys)} train, {len(data['val'].keys)} "
          f"val, {len(data['test'].keys)} test samples, {mask.sum()} in-mask voxels; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads", flush=True)
    results = []
    for how in a.inputs:
        for readout in a.readouts:
            t0 = time.perf_counter()
            rows = probe(data, pos, grid=mask.shape, channels=a.channels, how=how, readout=readout, steps=a.steps,
                         batch=a.batch, lr=a.lr, eval_every=a.eval_every, seed=a.seed, mixer=a.mixer)
            for step, loss, (vm, va), (tm, ta) in rows:
                print(f"  {how:11s} {readout:6s} step {step:4d}: train loss {loss:.4f}  val mAP {vm:.4f} AUC {va:.4f}"
                      f"  test mAP {tm:.4f} AUC {ta:.4f}", flush=True)
            best = max(rows, key=lambda r: r[2][0])
            results.append((how, readout, best, time.perf_counter() - t0))
    print(f"\n| input | read-out | best val mAP (step) | test mAP | test AUC | s |\n|---|---|---|---|---|---|")
    for how, readout, (step, _, (vm, _), (tm, ta)), sec in results:
        print(f"| {how} | {readout} | {vm:.4f} ({step}) | {tm:.4f} | {ta:.4f} | {sec:.0f} |")
    print(f"\nrerun: {' '.join([Path(sys.executable).name, *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
