"""``foundation bench``: method switches, resumable runs, the results table and its statistics."""

from __future__ import annotations

import json

import pytest
import yaml

from foundation.core.errors import RecipeError
from tests.conftest import tiny_recipe_dict


@pytest.fixture
def recipe_file(tmp_path):
    d = tiny_recipe_dict(tmp_path)
    d["train"].update({"steps": 6, "eval_every": 3, "checkpoint_every": 3})
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def test_methods_resolve_to_overrides():
    from foundation.workflows.compare import METHODS, resolve_method

    assert resolve_method("ss-vit").per_subject and not resolve_method("ms-emb").per_subject
    g = resolve_method("guidance:minilm")
    assert "guidance.low=minilm" in g.overrides and "guidance.high=minilm" in g.overrides
    assert "guidance.low=alexnet" in resolve_method("guidance:alexnet,clip").overrides
    for name in ("nonsense", "guidance:"):
        with pytest.raises(RecipeError, match="method"):
            resolve_method(name)
    assert {"clip-mused", "ms-smodel-vit", "ms-emb", "ss-vit", "clip-ss-vit", "no-orth", "no-low", "no-high"} <= set(METHODS)


def test_every_method_switch_builds_and_trains_a_step(recipe_file, tmp_path):
    from foundation.workflows.compare import METHODS, plan_jobs
    from foundation.core.recipe import load_recipe
    from foundation.engine.trainer import Trainer

    jobs = plan_jobs(recipe_file, methods=list(METHODS), seeds=[0], out=tmp_path / "b",
                     subjects=["synthetic/sub-02"])
    assert len(jobs) == len(METHODS)
    for job in jobs:
        if job.method.kind != "train":
            continue  # srm: tests/workflows/test_srm.py
        if job.method.volume_only:
            continue  # this recipe is an ROI world: tests/workflows/test_alignment.py trains them on volumes
        recipe = load_recipe(job.recipe_file, ["train.steps=1", "train.eval_every=1", "train.checkpoint_every=1"])
        if job.method.per_subject:
            assert recipe.datasets[0].subjects == ["sub-02"]
        trainer = Trainer(recipe, progress=False)
        trainer.fit()
        assert trainer.state.step == 1, job.method.name
        if job.method.name == "mapping":
            assert trainer.core.cfg.mapping_dims == [16, 16]  # the planted codes' sizes, from the shards
            assert {"mappers.low.weight", "mappers.high.weight"} <= set(trainer.core.state_dict())


@pytest.mark.slow
def test_bench_writes_tables_and_reuses_finished_runs(recipe_file, tmp_path):
    from foundation.workflows.compare import bench

    logs: list[str] = []
    kw = dict(methods=["clip-mused", "ss-vit"], seeds=2, out=tmp_path / "bench",
              subjects=["synthetic/sub-01"], log=logs.append)
    md = bench(recipe_file, **kw)
    text = md.read_text()
    for label in ("CLIP-MUSED", "SS-ViT", "reference", "Holm"):
        assert label in text
    results = json.loads((md.parent / "results.json").read_text())
    block = results["summary"]["synthetic"]
    assert set(block["methods"]) == {"clip-mused", "ss-vit"}
    # 2 seeds x 3 subjects for CLIP-MUSED, 2 seeds x the one chosen subject for SS: 2 pairs
    assert len(block["methods"]["clip-mused"]["scores"]["mAP"]) == 6
    assert len(block["methods"]["ss-vit"]["scores"]["mAP"]) == 2
    assert block["tests"]["ss-vit"]["n_pairs"] == 2
    assert len(block["methods"]["clip-mused"]["seed_means"]["mAP"]) == 2
    assert logs[0].startswith("4 runs (4 to train)")
    summed = sum(json.loads(p.read_text())["train_seconds"] for p in (tmp_path / "bench").rglob("metrics.json"))
    assert f"their training took {summed / 3600:.2f} h in all" in text
    logs.clear()
    again = bench(recipe_file, **kw).read_text()
    assert again.split("\n", 3)[3] == text.split("\n", 3)[3]
    assert f"their training took {summed / 3600:.2f} h in all" in again  # reused runs still counted
    assert logs[0].startswith("4 runs (0 to train)")


def test_paper_lambdas_per_method(recipe_file, tmp_path):
    """Table D5 (CLIP-SS-ViT) and Table B4 (mapping) use the paper's own λs, not the recipe's."""
    from foundation.workflows.compare import plan_jobs
    from foundation.core.recipe import load_recipe

    jobs = plan_jobs(recipe_file, methods=["clip-mused", "clip-ss-vit", "mapping"], seeds=[0], out=tmp_path / "b",
                     subjects=["synthetic/sub-01"])
    loss = {j.method.name: load_recipe(j.recipe_file).loss for j in jobs}
    base = load_recipe(recipe_file).loss
    assert (loss["clip-mused"].lambda_orth, loss["clip-mused"].lambda_low) == (base.lambda_orth, base.lambda_low)
    assert (loss["clip-ss-vit"].lambda_orth, loss["clip-ss-vit"].lambda_low, loss["clip-ss-vit"].lambda_high) == \
        (1e-4, 1e-4, 1e-4)
    assert (loss["mapping"].lambda_low, loss["mapping"].lambda_high) == (1e-4, 1e-4)
    assert loss["mapping"].lambda_orth == base.lambda_orth  # the paper names no λ⊥ for the mapping row


def test_summary_reads_old_and_new_metrics(tmp_path):
    """Pooled mAP comes from per_dataset.pooled (today) or per_dataset.mAP (metrics.json before issue 15)."""
    from foundation.workflows.compare import Job, resolve_method, summarise

    method = resolve_method("clip-mused")
    per_subject = {"ds/a": {"mAP": 0.8, "AUC": 0.9, "hamming": 0.1}, "ds/b": {"mAP": 0.6, "AUC": 0.7, "hamming": 0.2}}
    old = {"test": {"mAP": 0.5, "per_dataset": {"ds": {"mAP": 0.5}}, "per_subject": per_subject}}
    new = {"test": {"mAP": 0.7, "headline": "subject_mean", "pooled": {"mAP": 0.55},
                    "per_dataset": {"ds": {"mAP": 0.7, "pooled": {"mAP": 0.55}}}, "per_subject": per_subject}}
    jobs = [Job(method, seed, tmp_path / str(seed), tmp_path / f"{seed}.yaml") for seed in (0, 1)]
    row = summarise(jobs, [old, new])["ds"]["methods"]["clip-mused"]
    assert row["pooled_mAP"] == [0.5, 0.55]
    assert row["seed_means"]["mAP"] == pytest.approx([0.7, 0.7])


def test_guidance_methods_keep_only_the_options_of_the_plugins_they_use():
    """A paper recipe names its CLIP variant in guidance.options.clip; guidance:NAME rows must not
    carry it to a plugin that refuses unused options, and clip-image / clip-text keep the variant."""
    from foundation.workflows.compare import guidance_options

    clip = {"model": "ViT-B-16", "pretrained": "openai"}
    g = {"low": "clip", "high": "clip", "options": {"clip": clip}}
    assert guidance_options(g) == {"clip": clip}
    assert guidance_options({**g, "low": "vit", "high": "vit"}) == {}
    assert guidance_options({**g, "low": "clip-image", "high": "clip-image"}) == {"clip-image": clip}
    assert guidance_options({**g, "low": "alexnet", "high": "clip"}) == {"clip": clip}


def test_cli_refuses_zero_seeds(recipe_file, capsys):
    from foundation.cli import main

    assert main(["bench", str(recipe_file), "--seeds", "0"]) == 2  # a count of 0 seeds would run nothing
    assert "--seeds 1" in capsys.readouterr().err


def test_threads_per_run_honours_the_flag_then_the_callers_omp_num_threads(monkeypatch):
    from foundation.core.errors import RecipeError
    from foundation.workflows.compare import threads_per_run

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_run(2) == 4 and threads_per_run(16) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the caller's choice is kept (it used to be overridden)
    assert threads_per_run(2) == 1
    assert threads_per_run(2, 3) == 3
    with pytest.raises(RecipeError, match="--threads"):
        threads_per_run(2, 0)


def test_bench_archive_restores_unchanged_runs_and_retrains_changed_ones(recipe_file, tmp_path):
    """``--archive``: every finished run's metrics and recipe are kept; a clean ``runs/`` gets them back
    only for an identical recipe (an override makes it a different run, which is trained)."""
    from foundation.workflows.bench_archive import is_restored
    from foundation.workflows.compare import bench

    archive = tmp_path / "archive"
    kw = dict(methods=["ridge"], reference="ridge", seeds=2, archive=archive)
    logs: list[str] = []
    first = bench(recipe_file, out=tmp_path / "a", log=logs.append, **kw).read_text()
    assert logs[0].startswith("2 runs (2 to train)")
    saved = sorted(p.parent.name for p in archive.rglob("metrics.json"))
    assert saved == ["ridge-seed0", "ridge-seed1"]
    assert all((archive / "tiny" / name / "recipe.yaml").is_file() for name in saved)

    # an archive written before a key was added to the schema (model.volume_input absent = its default)
    old = archive / "tiny" / "ridge-seed0" / "recipe.yaml"
    d = yaml.safe_load(old.read_text())
    del d["model"]["volume_input"]
    old.write_text(yaml.safe_dump(d))
    before = old.read_bytes()

    logs.clear()  # a clean runs folder: everything restored, nothing trained, the same table
    again = bench(recipe_file, out=tmp_path / "b", log=logs.append, **kw)
    assert old.read_bytes() == before  # restoring does not rewrite the user's archive
    assert logs[0].startswith("2 runs (0 to train, 2 restored from")
    assert again.read_text().split("### ", 1)[1] == first.split("### ", 1)[1]
    assert "2 of the 2 runs are metrics restored from a bench archive" in again.read_text()
    run = tmp_path / "b" / "tiny" / "ridge-seed0"
    assert is_restored(run) and sorted(p.name for p in run.iterdir()) == [".restored-from-archive", "metrics.json"]

    # a changed recipe is another run: not restored (bench then trains it); only run.dir and the keys that
    # change no result (RESUMABLE_CHANGES: loader and logging settings, present or not) may differ, and a key
    # the archive predates counts at its default (model.volume_input absent = raw, what every run before it was fed)
    from foundation.workflows.bench_archive import restore

    planned = yaml.safe_load((tmp_path / "a" / "tiny" / "recipes" / "ridge-seed0.yaml").read_text())
    for i, (key, value, same) in enumerate((("dir", str(tmp_path / "elsewhere" / "tiny" / "ridge-seed0"), True),
                                            ("lr", 0.5, False), ("shard_cache_mib", 0, True),
                                            ("shard_cache_mib", None, True), ("volume_input", None, True),
                                            ("volume_input", "standardize", False))):
        d = json.loads(json.dumps(planned))
        section = d["run"] if key == "dir" else d["model"] if key == "volume_input" else d["train"]
        if value is None:
            del section[key]  # an archive written before the key existed
        else:
            section[key] = value
        changed = tmp_path / f"changed-{i}.yaml"
        changed.write_text(yaml.safe_dump(d))
        fresh = tmp_path / f"changed-{i}" / "tiny" / "ridge-seed0"
        assert restore(archive, run_dir=fresh, recipe_file=changed) is same, key
        assert (fresh / "metrics.json").is_file() is same

    with pytest.raises(RecipeError, match="holds a run of another recipe"):  # never overwrite another recipe's run
        bench(recipe_file, out=tmp_path / "d", overrides=["train.lr=0.5"], **kw)


def test_bench_waits_for_a_run_another_process_is_training_and_reuses_it(recipe_file, tmp_path):
    """Two ``foundation bench`` invocations on one ``--out``: the second waits for the run the first holds
    and reuses its metrics, instead of failing on the run directory's lock (or training it twice)."""
    import subprocess
    import sys
    import time

    from foundation.workflows.compare import bench, plan_jobs

    # metrics of a real ridge run elsewhere, which the holder below hands over as if it had trained the run
    real = bench(recipe_file, methods=["ridge"], reference="ridge", seeds=1, out=tmp_path / "elsewhere",
                 log=lambda _: None)
    fake = real.parent / "ridge-seed0" / "metrics.json"
    out = tmp_path / "bench"
    (job,) = plan_jobs(recipe_file, methods=["ridge"], seeds=[0], out=out / recipe_file.stem)
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, time\n"
        "from foundation.core.locks import hold\n"
        f"run = pathlib.Path({str(job.run_dir)!r})\n"
        "lock = hold(run, what='run directory')\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(4)\n"  # 'training'; then the finished run's metrics appear and the lock goes
        "run.mkdir(parents=True, exist_ok=True)\n"
        f"(run / 'metrics.json').write_text(pathlib.Path({str(fake)!r}).read_text())\n")])
    while not ready.exists():
        assert holder.poll() is None, "the lock holder died"
        time.sleep(0.05)
    logs: list[str] = []
    md = bench(recipe_file, methods=["ridge"], reference="ridge", seeds=1, out=out, log=logs.append)
    assert holder.wait(timeout=60) == 0
    assert logs[0].startswith("1 runs (1 to train)") and "done ridge seed 0" in logs
    assert sorted(p.name for p in job.run_dir.iterdir()) == ["metrics.json"]  # nothing trained here
    assert md.read_text().split("### ", 1)[1] == real.read_text().split("### ", 1)[1]


def test_a_run_refused_as_busy_is_retried_on_its_exit_status_and_other_failures_are_not(recipe_file, tmp_path,
                                                                                       monkeypatch):
    """``run_job`` tells a run taken between its lock check and the subprocess start (exit status 75,
    :class:`BusyError`) from a real failure by the exit status, not by the wording of the message: the busy
    one is retried, any other status fails at once with the run's stderr."""
    import subprocess

    from foundation.core.errors import BusyError
    from foundation.workflows import compare

    (job,) = compare.plan_jobs(recipe_file, methods=["ridge"], seeds=[0], out=tmp_path / "b")
    calls: list[list[str]] = []

    def busy_then_done(cmd, **_):
        calls.append(cmd)
        if len(calls) == 1:
            return subprocess.CompletedProcess(cmd, BusyError.exit_status, "", "error: taken (message reworded)")
        job.run_dir.mkdir(parents=True, exist_ok=True)
        (job.run_dir / "metrics.json").write_text(json.dumps({"ok": 1}))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(compare.subprocess, "run", busy_then_done)
    assert compare.run_job(job, threads=1) == {"ok": 1} and len(calls) == 2

    (other,) = compare.plan_jobs(recipe_file, methods=["ridge"], seeds=[1], out=tmp_path / "b")
    calls.clear()
    monkeypatch.setattr(compare.subprocess, "run", lambda cmd, **_: calls.append(cmd) or subprocess.CompletedProcess(
        cmd, 2, "", "error: run directory x is in use by nobody"))  # a usage error, whatever its text says
    with pytest.raises(RuntimeError, match="is in use by nobody"):
        compare.run_job(other, threads=1)
    assert len(calls) == 1
