"""``foundation bench RECIPE``: the paper's comparisons (methods, ablations, guidance) on any recipe.

Every method is a switch of the same model code (recipe overrides), trained over several seeds.  The
recipe's λs are used for every row except those the paper tuned apart: CLIP-SS-ViT (Table D5: λ⊥ =
λ_low = λ_high = 1e-4) and the mapping baseline (Table B4: λ = 1e-4 for the mapping terms).  Runs
whose ``metrics.json`` exists are reused, so an interrupted bench resumes by rerunning it.  The
report (``results.md`` + ``results.json`` in ``OUT/<recipe>/``) gives, per dataset, the mean over
subjects of each subject's test mAP / AUC / Hamming as mean ± std over seeds, and a paired t-test of
the reference row (CLIP-MUSED unless ``--reference``) against every other row over (seed, subject)
pairs, Holm–Bonferroni corrected as one family (``***`` p < .001, ``**`` p < .01, ``*`` p < .05, ``n.s.`` not significant).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from foundation.core.errors import RecipeError

NO_GUIDANCE = ("loss.lambda_orth=0", "loss.lambda_low=0", "loss.lambda_high=0")
#: Table D5: "the optimal parameters [of CLIP-SS-ViT] are λ⊥ = 0.0001, λhlv = 0.0001, and λllv = 0.0001"
CLIP_SS_VIT_LAMBDAS = ("loss.lambda_orth=0.0001", "loss.lambda_low=0.0001", "loss.lambda_high=0.0001")
#: Table B4: "The coefficient (λ = 0.0001) of the mapping-based loss item has been optimized": both
#: mapping terms; the paper names no λ⊥ for this row and its public code (CLIP-MUSED/CLIP-MUSED: the HCP
#: model, RSA and orthogonality losses only) has no mapping-based model, so the recipe's λ⊥ is kept
MAPPING_LAMBDAS = ("loss.lambda_low=0.0001", "loss.lambda_high=0.0001")


@dataclasses.dataclass(frozen=True)
class Method:
    """A row of the comparison: recipe overrides, trained on all subjects or one model per subject."""

    name: str
    label: str
    overrides: tuple[str, ...]
    per_subject: bool = False
    description: str = ""
    kind: str = "train"  # "train": foundation train; "srm" / "linear": a closed-form module (CLOSED_FORM)
    args: tuple[str, ...] = ()  # extra command-line arguments of a closed-form module
    #: ``False``: the run fits one model per subject inside one process (the per-subject linear read-outs)
    shared_model: bool = True
    #: the method needs volume datasets (a voxel grid shared by the subjects); on ROI inputs it stops with a DataError
    volume_only: bool = False

    @property
    def one_model(self) -> bool:
        """Whether a run is one model over all its subjects (has a pooled mAP)."""
        return not self.per_subject and self.shared_model


#: closed-form methods: kind -> module run as ``python -m MODULE RECIPE --no-progress [args]``; each
#: writes ``metrics.json`` in the schema of a training run
CLOSED_FORM = {"srm": "foundation.workflows.srm", "linear": "foundation.workflows.linear"}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("clip-mused", "CLIP-MUSED", ("model.tokens=subject",),
           description="a low and a high token per subject; BCE + λ⊥·L⊥ + λ_low·RSA_low + λ_high·RSA_high"),
    Method("ms-smodel-vit", "MS-SMODEL-ViT", ("model.tokens=shared", *NO_GUIDANCE),
           description="all subjects pooled into one Transformer, no subject tokens, BCE only"),
    Method("ms-emb", "MS-EMB", ("model.tokens=identity", *NO_GUIDANCE),
           description="one identity token per subject (Chehab et al., 2022), BCE only"),
    Method("ss-vit", "SS-ViT", ("model.tokens=shared", *NO_GUIDANCE), per_subject=True,
           description="one Transformer per subject, BCE only"),
    Method("ss-mlp", "SS-MLP / SS-CNN", ("model.tokens=shared", "model.backbone=mlp", *NO_GUIDANCE),
           per_subject=True, description="one MLP per subject (on ROI tokens; on volumes, after the 3-D CNN)"),
    Method("ms-smodel-mlp", "MS-SMODEL-MLP / -CNN", ("model.tokens=shared", "model.backbone=mlp", *NO_GUIDANCE),
           description="all subjects pooled into one MLP (volumes: 3-D CNN), BCE only"),
    Method("clip-ss-vit", "CLIP-SS-ViT", ("model.tokens=subject", *CLIP_SS_VIT_LAMBDAS), per_subject=True,
           description="CLIP-MUSED's model and losses trained on one subject, the paper's λs: all 1e-4 (Table D5)"),
    Method("mapping", "Mapping-based", ("model.tokens=subject", "loss.guidance_loss=mapping", *MAPPING_LAMBDAS),
           description="Table B4: the tokens regress the guidance features (MSE) instead of the RSA losses, "
                       "the paper's λ_low = λ_high = 1e-4"),
    Method("srm", "SRM", (), kind="srm",
           description="BrainIAK's shared response model + logistic regression (needs shared stimuli)"),
    Method("ridge", "Ridge (per subject)", (), kind="linear", args=("--solver", "ridge"), shared_model=False,
           description="one ridge regression per subject from the flattened inputs to the labels, alpha on val"),
    Method("logistic", "Logistic (per subject)", (), kind="linear", args=("--solver", "logistic"), shared_model=False,
           description="one L2 logistic regression per subject and label on the flattened inputs, C on val"),
    Method("aligned-ridge", "Ridge pooled + alignment", (), kind="linear",
           args=("--solver", "ridge", "--alignment", "guidance-ridge"),
           description="each subject's inputs aligned as model.alignment=guidance-ridge, then one ridge read-out "
                       "pooled over all subjects (alpha on the subject-mean val mAP); no per-subject learned "
                       "parameters: the linear counterpart of aligned-mlp"),
    Method("aligned-logistic", "Logistic pooled + alignment", (), kind="linear",
           args=("--solver", "logistic", "--alignment", "guidance-ridge"),
           description="aligned-ridge with one L2 logistic regression per label instead of the ridge (C on the "
                       "subject-mean val mAP): the linear counterpart of a logistic label head"),
    Method("aligned-clip-mused", "CLIP-MUSED + alignment", ("model.tokens=subject", "model.alignment=guidance-ridge"),
           description="CLIP-MUSED on per-subject inputs aligned in closed form onto the guidance space "
                       "(model.alignment=guidance-ridge)"),
    Method("aligned-enc-clip-mused", "CLIP-MUSED + encoding alignment",
           ("model.tokens=subject", "model.alignment=guidance-encoding"),
           description="CLIP-MUSED on per-subject inputs aligned by an inverted encoding model "
                       "(model.alignment=guidance-encoding)"),
    Method("aligned-lin-clip-mused", "CLIP-MUSED + alignment, linear head",
           ("model.tokens=subject", "model.alignment=guidance-ridge", "model.head=linear"),
           description="aligned-clip-mused with one linear map from the two readout tokens to the labels instead "
                       "of the paper's MLP head (model.head=linear)"),
    Method("pca-aligned-ridge", "Ridge pooled + PCA alignment", (), kind="linear",
           args=("--solver", "ridge", "--alignment", "guidance-pca-ridge"),
           description="aligned-ridge with each subject's map fitted through its own leading principal components, "
                       "the rank by leave-one-out (model.alignment=guidance-pca-ridge)"),
    Method("pca-aligned-lin-clip-mused", "CLIP-MUSED + PCA alignment, linear head",
           ("model.tokens=subject", "model.alignment=guidance-pca-ridge", "model.head=linear"),
           description="aligned-lin-clip-mused with the reduced-rank alignment (model.alignment=guidance-pca-ridge)"),
    Method("joint-ridge", "Ridge pooled + joint alignment", (), kind="linear",
           args=("--solver", "ridge", "--alignment", "guidance-ridge-joint"),
           description="aligned-ridge with the subjects' maps fitted together, a map shared in the voxel grid plus "
                       "each subject's own (model.alignment=guidance-ridge-joint; volume datasets)", volume_only=True),
    Method("joint-lin-clip-mused", "CLIP-MUSED + joint alignment, linear head",
           ("model.tokens=subject", "model.alignment=guidance-ridge-joint", "model.head=linear"),
           description="aligned-lin-clip-mused with the subjects' maps fitted together, sharing a map in the voxel "
                       "grid (model.alignment=guidance-ridge-joint; volume datasets)", volume_only=True),
    Method("grid-ridge", "Ridge pooled in the voxel grid", (), kind="linear",
           args=("--solver", "ridge", "--alignment", "grid"),
           description="one ridge read-out over all subjects' voxels placed in the dataset's voxel grid, each "
                       "standardised with its own training statistics: one map shared by every subject, no fitted "
                       "alignment (volume datasets)", volume_only=True),
    Method("spatial-clip-mused", "CLIP-MUSED, spatial read-out",
           ("model.tokens=subject", "model.volume_input=standardize", "model.volume_readout=spatial"),
           description="CLIP-MUSED with each sample's voxels standardised and a read-out with a weight per patch "
                       "position added to the readout tokens (model.volume_readout=spatial, recipes/hcp.yaml's "
                       "default; on ROI datasets it is clip-mused)"),
    Method("voxel-clip-mused", "CLIP-MUSED, spatial + voxel read-outs",
           ("model.tokens=subject", "model.volume_input=standardize", "model.volume_readout=spatial",
            "model.volume_linear_rank=64"),
           description="spatial-clip-mused plus a rank-64 linear read-out of the voxels themselves, shared by the "
                       "subjects (model.volume_linear_rank=64; on ROI datasets it is clip-mused)"),
    Method("aligned-mlp", "MS-SMODEL-MLP + alignment",
           ("model.tokens=shared", "model.backbone=mlp", "model.alignment=guidance-ridge", *NO_GUIDANCE),
           description="one MLP pooled over all subjects on their aligned inputs; no per-subject learned parameters"),
    Method("no-orth", "CLIP-MUSED w/o L⊥", ("model.tokens=subject", "loss.lambda_orth=0"),
           description="ablation: no orthogonality loss (Table 3)"),
    Method("no-low", "CLIP-MUSED w/o RSA_low", ("model.tokens=subject", "loss.lambda_low=0"),
           description="ablation: no low-level RSA loss (Table 3)"),
    Method("no-high", "CLIP-MUSED w/o RSA_high", ("model.tokens=subject", "loss.lambda_high=0"),
           description="ablation: no high-level RSA loss (Table 3)"),
    Method("no-rsa", "CLIP-MUSED w/o RSA", ("model.tokens=subject", "loss.lambda_low=0", "loss.lambda_high=0"),
           description="ablation: neither RSA loss (Table 3)"),
)}
REFERENCE = "clip-mused"
DEFAULT_METHODS = ("clip-mused", "ms-smodel-vit", "ms-emb", "ss-vit", "clip-ss-vit", "ridge", "logistic", "no-orth", "no-low",
                   "no-high")


def resolve_method(name: str) -> Method:
    """A registered method, or ``guidance:NAME`` / ``guidance:LOW,HIGH`` (CLIP-MUSED with other guidance)."""
    if name in METHODS:
        return METHODS[name]
    if name.startswith("guidance:"):
        parts = name.split(":", 1)[1].split(",")
        if len(parts) not in (1, 2) or not all(parts):
            raise RecipeError(f"method {name!r}: write guidance:NAME or guidance:LOW,HIGH")
        low, high = parts[0], parts[-1]
        label = f"CLIP-MUSED, guidance {low}" + (f" / {high}" if high != low else "")
        return Method(name, label, ("model.tokens=subject", f"guidance.low={low}", f"guidance.high={high}"),
                      description="Table E6: the guidance network swapped")
    raise RecipeError(f"unknown method {name!r}; choose from {sorted(METHODS)} or guidance:NAME")


def guidance_options(guidance: dict[str, Any]) -> dict[str, Any]:
    """The recipe's ``guidance.options`` for the plugins a method uses (``guidance:NAME`` swaps them).

    Options of plugins no longer used are dropped (a recipe refuses them); ``clip-image`` / ``clip-text``
    without options of their own take ``clip``'s (the same network: the recipe's CLIP variant).
    """
    given = dict(guidance.get("options") or {})
    used = {guidance["low"], guidance["high"]}
    out = {name: opts for name, opts in given.items() if name in used}
    for name in used - set(out):
        if name in ("clip-image", "clip-text") and "clip" in given:
            out[name] = given["clip"]
    return out


@dataclasses.dataclass(frozen=True)
class Job:
    method: Method
    seed: int
    run_dir: Path
    recipe_file: Path
    subject: str | None = None  # "dataset/subject" for per-subject methods


def plan_jobs(recipe_path: str | Path, *, methods: Sequence[str], seeds: Sequence[int], out: Path,
              overrides: Sequence[str] = (), subjects: Sequence[str] | None = None) -> list[Job]:
    """One job per (method, seed[, subject]); writes each job's resolved recipe under ``out/recipes``."""
    from foundation.data.shards import build_shards
    from foundation.core.recipe import load_recipe, to_dict

    base = load_recipe(recipe_path, list(overrides))
    all_subjects = []
    for cfg, index in zip(base.datasets, build_shards(base, progress=False).values()):
        chosen = cfg.subjects or list(index.data["subjects"])
        all_subjects += [f"{cfg.id}/{s}" for s in chosen]
    if subjects:
        unknown = sorted(set(subjects) - set(all_subjects))
        if unknown:
            raise RecipeError(f"--subjects {unknown} are not subjects of the recipe ({all_subjects[:5]}…)")
    jobs = []
    for name in methods:
        method = resolve_method(name)
        for seed in seeds:
            recipe = load_recipe(recipe_path, [*overrides, *method.overrides, f"seed={seed}"])
            targets = (subjects or all_subjects) if method.per_subject else [None]
            for subject in targets:
                d = to_dict(recipe)
                d["guidance"]["options"] = guidance_options(d["guidance"])
                tag = f"{method.name.replace(':', '-').replace(',', '-')}-seed{seed}"
                if subject is not None:
                    ds, sub = subject.split("/", 1)
                    d["datasets"] = [x for x in d["datasets"] if (x.get("name") or x["plugin"]) == ds]
                    d["datasets"][0]["subjects"] = [sub]
                    tag += f"-{ds}-{sub}"
                run_dir = out / tag
                d["run"]["dir"] = str(run_dir)
                recipe_file = out / "recipes" / f"{tag}.yaml"
                recipe_file.parent.mkdir(parents=True, exist_ok=True)
                recipe_file.write_text(yaml.safe_dump(d, sort_keys=False))
                jobs.append(Job(method, seed, run_dir, recipe_file, subject))
    return jobs


def threads_per_run(jobs: int, threads: int | None = None) -> int:
    """Threads of each run: ``threads`` if given, else the caller's ``OMP_NUM_THREADS`` if set, else cores ÷ jobs."""
    if threads is not None:
        if threads < 1:
            raise RecipeError(f"--threads must be ≥ 1, got {threads}")
        return threads
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) >= 1:
        return int(env)
    return max(1, (os.cpu_count() or 1) // max(jobs, 1))


def run_job(job: Job, *, threads: int) -> dict[str, Any]:
    """Train one job in a subprocess unless its metrics.json exists; returns the metrics.

    A run that another process is training (another ``foundation bench`` on the same ``--out``) is waited
    for and then reused, not trained twice nor failed on its lock."""
    from foundation.core.errors import BusyError
    from foundation.core.locks import hold

    metrics = job.run_dir / "metrics.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if job.method.kind == "train":
        cmd = [sys.executable, "-m", "foundation", "train", str(job.recipe_file), "--no-progress"]
    else:
        cmd = [sys.executable, "-m", CLOSED_FORM[job.method.kind], str(job.recipe_file), "--no-progress",
               *job.method.args]
    for attempt in range(3):
        if metrics.is_file():
            break
        hold(job.run_dir, what="run directory", wait=True).release()  # returns at once unless it is in use
        if metrics.is_file():  # the other process finished it
            break
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            break
        if proc.returncode != BusyError.exit_status or attempt == 2:  # busy: taken between our check and start
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(metrics.read_text())


def _fmt(xs: Sequence[float]) -> str:
    if not xs:
        return "–"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.3f} ± {sd:.3f}"


def summarise(jobs: Sequence[Job], results: Sequence[dict[str, Any]], *, reference: str = REFERENCE) -> dict[str, Any]:
    """Per dataset and method: per-(seed, subject) scores, seed-level means, pooled mAP, run seconds, and
    the paired tests of ``reference`` against every other row."""
    from foundation.objectives.scoring import pooled
    from foundation.objectives.stats import compare_to_reference

    per: dict[str, dict[str, dict[str, Any]]] = {}  # dataset -> method -> data
    for job, m in zip(jobs, results):
        for subject, values in m["test"]["per_subject"].items():
            ds = subject.split("/", 1)[0]
            row = per.setdefault(ds, {}).setdefault(job.method.name, {
                "label": job.method.label, "scores": {k: {} for k in ("mAP", "AUC", "hamming")},
                "pooled": {}, "seconds": []})
            for k in row["scores"]:
                row["scores"][k][f"seed{job.seed}/{subject}"] = values[k]
        for ds, values in m["test"]["per_dataset"].items():
            row = per[ds][job.method.name]
            if job.subject is None and job.method.one_model:
                row["pooled"][job.seed] = pooled(values)  # metrics.json of any age
            if m.get("train_seconds"):
                row["seconds"].append(m["train_seconds"])
    out: dict[str, Any] = {}
    for ds, methods in per.items():
        rows = {}
        for name, row in methods.items():
            seed_means = {}
            for k, scores in row["scores"].items():
                by_seed: dict[str, list[float]] = {}
                for key, v in scores.items():
                    by_seed.setdefault(key.split("/", 1)[0], []).append(v)
                seed_means[k] = [statistics.fmean(v) for _, v in sorted(by_seed.items())]
            rows[name] = {"label": row["label"], "seed_means": seed_means, "pooled_mAP": list(row["pooled"].values()),
                          "seconds": row["seconds"], "scores": row["scores"]}
        tests = {}
        if reference in rows and len(rows) > 1:
            for c in compare_to_reference({n: r["scores"]["mAP"] for n, r in rows.items()}, reference):
                tests[c.method] = dataclasses.asdict(c) | {"mark": c.mark}
        out[ds] = {"methods": rows, "tests": tests, "reference": reference}
    return out


def markdown(summary: dict[str, Any], *, header: str) -> str:
    lines = [header, ""]
    ref_label = {ds: block["methods"].get(block.get("reference", REFERENCE), {}).get(
        "label", block.get("reference", REFERENCE)) for ds, block in summary.items()}
    for ds, block in summary.items():
        lines += [f"### {ds}", "",
                  f"| method | mAP ↑ | AUC ↑ | Hamming ↓ | pooled mAP ↑ | Δ mAP vs {ref_label[ds]} (paired, Holm) | s/run |",
                  "|---|---|---|---|---|---|---|"]
        for name, row in block["methods"].items():
            sm = row["seed_means"]
            test = block["tests"].get(name)
            if test is None:
                sig = "reference" if name == block.get("reference", REFERENCE) else "–"
            else:
                sig = (f"{-test['mean_difference']:+.3f} {test['mark']} "
                       f"(p = {test['p_holm']:.2g}, n = {test['n_pairs']})")
            secs = f"{statistics.fmean(row['seconds']):.0f}" if row["seconds"] else "–"
            lines.append(f"| {row['label']} | {_fmt(sm['mAP'])} | {_fmt(sm['AUC'])} | {_fmt(sm['hamming'])} | "
                         f"{_fmt(row['pooled_mAP'])} | {sig} | {secs} |")
        lines.append("")
    lines.append("mAP / AUC / Hamming: mean over subjects of each subject's test metrics, mean ± std over seeds. "
                 "Δ: the row minus the reference row over (seed, subject) pairs; two-sided paired t-test, "
                 "Holm–Bonferroni over all rows; *** p < .001, ** p < .01, * p < .05, n.s. not significant.")
    return "\n".join(lines)


def bench(recipe_path: str | Path, *, methods: Sequence[str] = DEFAULT_METHODS, seeds: int | Sequence[int] = 3,
          out: str | Path = "runs/bench", overrides: Sequence[str] = (), subjects: Sequence[str] | None = None,
          jobs: int = 1, threads: int | None = None, reference: str = REFERENCE,
          archive: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Run (or reuse) every job and write ``results.md`` / ``results.json``; returns the markdown path.

    ``reference``: the row every other row is tested against (default CLIP-MUSED; must be among ``methods``).
    ``threads``: per run (:func:`threads_per_run`: default the caller's ``OMP_NUM_THREADS``, else cores ÷ jobs).
    ``archive``: a folder (:mod:`foundation.workflows.bench_archive`) that receives every finished run's
    ``metrics.json`` and recipe, and from which a missing run whose recipe is unchanged is restored."""
    from foundation.core.atomic import write_json
    from foundation.workflows import bench_archive

    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    for name in methods:
        resolve_method(name)  # fail before any training
    if reference not in methods:
        raise RecipeError(f"--reference {reference!r} is not among --methods {list(methods)}")
    out = Path(out) / Path(recipe_path).stem
    planned = plan_jobs(recipe_path, methods=methods, seeds=seed_list, out=out, overrides=overrides,
                        subjects=subjects)
    threads = threads_per_run(jobs, threads)
    restored = 0
    archive = Path(archive) if archive is not None else None
    if archive is not None:
        clash = [c for j in planned if (c := bench_archive.conflict(archive, run_dir=j.run_dir,
                                                                     recipe_file=j.recipe_file))]
        if clash:
            raise RecipeError(f"--archive {archive}: {clash[0]} (and {len(clash) - 1} more) holds a run of another "
                              f"recipe under the same name; give each --out and set of overrides its own archive")
        restored = sum(bench_archive.restore(archive, run_dir=j.run_dir, recipe_file=j.recipe_file)
                       for j in planned)
    log(f"{len(planned)} runs ({sum(not (j.run_dir / 'metrics.json').is_file() for j in planned)} to train"
        + (f", {restored} restored from {archive}" if restored else "") + f"), {jobs} at a time × {threads} threads")
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = [None] * len(planned)  # type: ignore[list-item]

    def work(i: int) -> None:
        results[i] = run_job(planned[i], threads=threads)
        j = planned[i]
        if archive is not None:
            bench_archive.save(archive, run_dir=j.run_dir, recipe_file=j.recipe_file)
        log(f"done {j.method.name} seed {j.seed}" + (f" {j.subject}" if j.subject else ""))

    with ThreadPoolExecutor(max(jobs, 1)) as pool:
        list(pool.map(work, range(len(planned))))
    wall = time.perf_counter() - t0
    run_s = sum(r.get("train_seconds") or 0.0 for r in results)
    summary = summarise(planned, results, reference=reference)
    command = " ".join(["foundation bench", str(recipe_path), *overrides, "--methods", *methods,
                        "--seeds", *(map(str, seed_list))] + (["--subjects", *subjects] if subjects else [])
                       + (["--reference", reference] if reference != REFERENCE else []))
    header = (f"`{command}`\n\n{platform.machine()} {platform.processor() or ''} × {os.cpu_count()} cores, "
              f"{len(planned)} runs; their training took {run_s / 3600:.2f} h in all (sum over runs, from each "
              f"metrics.json); this invocation {wall / 60:.1f} min wall ({jobs} jobs in parallel, reused runs "
              f"not retrained).")
    from foundation.objectives.scoring import is_subject_mean

    n_archived = sum(bench_archive.is_restored(j.run_dir) for j in planned)
    if n_archived:
        header += (f" {n_archived} of the {len(planned)} runs are metrics restored from a bench archive "
                   f"(trained earlier with the same recipe; no checkpoint here).")
    old = [str(j.run_dir) for j, r in zip(planned, results) if not is_subject_mean(r["test"])]
    if old:  # reported, not retrained: delete those run directories to retrain them under today's rule
        header += (f"\n\n{len(old)} of the {len(planned)} runs were written before selection on the mean over "
                   f"subjects (their best step was chosen on pooled validation mAP): {', '.join(old[:3])}"
                   f"{' …' if len(old) > 3 else ''}; delete them and rerun to retrain under today's rule.")
    text = markdown(summary, header=header)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text + "\n")
    write_json(out / "results.json", {"command": command, "seeds": seed_list, "summary": summary})
    log(text)
    return out / "results.md"
