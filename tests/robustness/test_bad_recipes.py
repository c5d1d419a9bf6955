"""Bad recipes, bad plugins and unknown subjects: refused by name before anything is written.

A recipe error names the key (and the file); a plugin error names the plugin and where it came from;
an unknown subject names the subject, the recipe key and the subjects that exist.  None of them leaves
a run directory or a shard directory behind, so the corrected command is never blocked by the failed
one.  The command line reports every one of them as ``error: <message>`` with exit status 2.
"""

from __future__ import annotations

import shutil
import sys
import types
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import yaml

from foundation.core import plugins
from foundation.core.config import Recipe
from foundation.core.errors import PluginError, RecipeError, UnknownSubjectError
from foundation.core.hookspecs import hookimpl
from foundation.core.recipe import from_dict, load_recipe, validate_recipe
from tests.conftest import tiny_recipe_dict

from .conftest import assert_nothing_half_written, expect, tree_bytes


def _write(tmp_path: Path, d: dict, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


def _nothing_made(tmp_path: Path) -> None:
    assert not (tmp_path / "run").exists(), "a refused recipe made a run directory"
    assert not (tmp_path / "shards").exists(), "a refused recipe made a shard directory"


def _cli(capsys, *args: str) -> str:
    """Run the command line in-process; it must fail with status 2 and a one-line error (no traceback)."""
    from foundation.cli import main

    capsys.readouterr()
    assert main([*args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def _train(recipe: Recipe):
    from foundation.workflows.train import train

    return lambda: train(recipe, progress=False)


def _recipe(tmp_path: Path, **changes) -> Recipe:
    d = tiny_recipe_dict(tmp_path)
    d["train"].update(steps=4, eval_every=2, checkpoint_every=2, log_every=2)
    for dotted, value in changes.items():
        node = d
        *parents, last = dotted.split(".")
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value
    recipe = from_dict(Recipe, d)
    validate_recipe(recipe)
    return recipe


# --------------------------------------------------------------------------- recipe keys and values


def test_misspelt_recipe_key(tmp_path, capsys, request):
    d = tiny_recipe_dict(tmp_path)
    d["train"]["lrr"] = 0.1
    path = _write(tmp_path, d)
    expect("misspelt recipe key", RecipeError, lambda: load_recipe(path), path, "train.lrr",
           "did you mean 'lr'?", request=request)
    assert "train.lrr" in _cli(capsys, "train", str(path), "--no-progress")
    _nothing_made(tmp_path)


def test_mistyped_recipe_value(tmp_path, capsys, request):
    d = tiny_recipe_dict(tmp_path)
    d["train"]["lr"] = "fast"
    path = _write(tmp_path, d)
    expect("mistyped recipe value", RecipeError, lambda: load_recipe(path), path, "train.lr",
           "expected float, got str 'fast'", request=request)
    assert "train.lr" in _cli(capsys, "shard", str(path), "--no-progress")
    _nothing_made(tmp_path)


def test_mistyped_override(tmp_path, capsys, request):
    path = _write(tmp_path, tiny_recipe_dict(tmp_path))
    expect("mistyped command-line override", RecipeError, lambda: load_recipe(path, ["train.batch_size=many"]),
           "train.batch_size", "expected int, got str 'many'", "train.batch_size=many", request=request)
    assert "train.batch_size" in _cli(capsys, "train", str(path), "train.batch_size=many")
    _nothing_made(tmp_path)


def test_zero_interval(tmp_path, request):
    """``train.checkpoint_every: 0`` used to pass validation and die with ZeroDivisionError mid-run."""
    path = _write(tmp_path, tiny_recipe_dict(tmp_path))
    expect("zero checkpoint interval", RecipeError, lambda: load_recipe(path, ["train.checkpoint_every=0"]),
           path, "train.checkpoint_every: must be > 0, got 0", request=request)
    with pytest.raises(RecipeError, match=r"train\.keep_checkpoints: must be > 0"):
        load_recipe(path, ["train.keep_checkpoints=0"])
    _nothing_made(tmp_path)


def test_yaml_that_would_build_an_object(tmp_path, request):
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "ran"
    path.write_text(f"name: !!python/object/apply:os.mkdir ['{marker}']\n")
    expect("recipe YAML with a Python object tag", RecipeError, lambda: load_recipe(path), path, "invalid YAML",
           "line 1", request=request)
    assert not marker.exists()


def test_duplicate_subject_ids(tmp_path, capsys, request):
    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["subjects"] = ["sub-01", "sub-02", "sub-01"]
    path = _write(tmp_path, d)
    expect("duplicate subject ids", RecipeError, lambda: load_recipe(path), path, "datasets.0.subjects",
           "duplicate subject id(s) ['sub-01']", request=request)
    assert "sub-01" in _cli(capsys, "train", str(path))
    _nothing_made(tmp_path)


def test_dataset_root_that_does_not_exist(tmp_path, request):
    recipe = _recipe(tmp_path, **{"datasets.0.root": str(tmp_path / "nowhere")})
    expect("datasets[].root that does not exist", RecipeError, _train(recipe), "datasets.0.root",
           tmp_path / "nowhere", request=request)
    _nothing_made(tmp_path)


def test_run_dir_that_is_a_file(tmp_path, request):
    (tmp_path / "run").write_text("my notes\n")
    expect("run.dir that is a file", RecipeError, _train(_recipe(tmp_path)), "run.dir", tmp_path / "run",
           "is not a directory", request=request)
    assert (tmp_path / "run").read_text() == "my notes\n"
    assert not (tmp_path / "shards").exists()


def test_shards_root_that_is_a_file(tmp_path, request):
    (tmp_path / "shards").write_text("not a folder\n")
    expect("shards.root that is a file", RecipeError, _train(_recipe(tmp_path)), "shards.root",
           tmp_path / "shards", request=request)
    assert (tmp_path / "shards").read_text() == "not a folder\n"
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- plugins


def test_recipe_naming_an_unregistered_plugin(tmp_path, capsys, request):
    recipe = _recipe(tmp_path, **{"datasets.0.plugin": "synthetik"})
    expect("recipe naming an unregistered dataset plugin", PluginError, _train(recipe), "'synthetik'",
           "did you mean 'synthetic'?", request=request)
    d = tiny_recipe_dict(tmp_path)
    d["guidance"] = {"low": "planted", "high": "clipp"}
    assert "'clipp'" in _cli(capsys, "shard", str(_write(tmp_path, d)))
    _nothing_made(tmp_path)


def _entry_points(monkeypatch, **extra: str) -> None:
    """The installed entry points plus ``name=module`` ones (a broken third-party package)."""
    real = plugins._entry_points()
    fake = [EntryPoint(name=n, value=v, group="foundation") for n, v in extra.items()]
    monkeypatch.setattr(plugins, "_entry_points", lambda: [*real, *fake])
    monkeypatch.setattr(plugins, "_manager", None)


def test_plugin_that_fails_to_import(tmp_path, monkeypatch, request):
    # isolated: only a recipe needing a plugin the broken package may provide fails, naming it
    _entry_points(monkeypatch, broken="foundation_no_such_plugin_module")
    expect("plugin that raises during registration (import)", PluginError,
           _train(_recipe(tmp_path, **{"datasets.0.plugin": "broken-dataset"})), "'broken-dataset'",
           "entry point 'broken'", "foundation_no_such_plugin_module", "ModuleNotFoundError", request=request)
    _nothing_made(tmp_path)


def test_plugin_whose_registration_hook_raises(tmp_path, monkeypatch, request):
    module = types.ModuleType("foundation_raising_plugin")

    def foundation_dataset_plugins():
        raise RuntimeError("cannot list my datasets")

    module.foundation_dataset_plugins = hookimpl(foundation_dataset_plugins)
    monkeypatch.setitem(sys.modules, "foundation_raising_plugin", module)
    _entry_points(monkeypatch, raiser="foundation_raising_plugin")
    expect("plugin that raises during registration (hook)", PluginError,
           _train(_recipe(tmp_path, **{"datasets.0.plugin": "raiser-dataset"})), "'raiser'",
           "foundation_raising_plugin", "foundation_dataset_plugins", "RuntimeError: cannot list my datasets",
           request=request)
    _nothing_made(tmp_path)


def test_plugin_that_raises_when_constructed(tmp_path, fresh_plugins, request):
    from foundation_synthetic.plugin import SyntheticDataset

    class Fragile(SyntheticDataset):
        name = "fragile"

        def __init__(self, *args, **kwargs):
            raise OSError("licence file missing")

    fresh_plugins(Fragile)
    expect("plugin that raises when constructed", PluginError,
           _train(_recipe(tmp_path, **{"datasets.0.plugin": "fragile"})), "'fragile'",
           "OSError: licence file missing", request=request)
    _nothing_made(tmp_path)


# --------------------------------------------------------------------------- unknown subjects


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny run trained on sub-01 and sub-02 (sub-03 held out)."""
    from foundation.workflows.train import train

    root = tmp_path_factory.mktemp("pretrained")
    recipe = _recipe(root, **{"datasets.0.subjects": ["sub-01", "sub-02"]})
    train(recipe, progress=False)
    return root


def test_unknown_subject_at_train(pretrained, tmp_path, request):
    shards = tmp_path / "shards"
    shutil.copytree(pretrained / "shards", shards)
    recipe = _recipe(tmp_path, **{"datasets.0.subjects": ["sub-01", "sub-09"]})
    expect("unknown subject at train", UnknownSubjectError, _train(recipe), "datasets.0.subjects", "['sub-09']",
           "'synthetic'", "['sub-01', 'sub-02', 'sub-03']", request=request)
    assert not (tmp_path / "run").exists()  # so the corrected command is not refused as "a different recipe"
    assert_nothing_half_written(tmp_path)
    _train(_recipe(tmp_path, **{"datasets.0.subjects": ["sub-01", "sub-03"], "train.steps": 2}))()
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_unknown_subject_at_finetune(pretrained, tmp_path, request):
    from foundation.workflows.finetune import finetune

    shutil.copytree(pretrained / "shards", tmp_path / "shards")
    recipe = _recipe(tmp_path, **{"datasets.0.subjects": ["sub-07"]})
    expect("unknown subject at finetune", UnknownSubjectError,
           lambda: finetune(pretrained / "run", recipe, progress=False), "datasets.0.subjects", "['sub-07']",
           request=request)
    assert not (tmp_path / "run").exists()
    assert_nothing_half_written(tmp_path, pretrained / "run")


def test_unknown_subject_at_predict(pretrained, tmp_path, request):
    from foundation.workflows.predict import predict_run

    scans = tmp_path / "scans.npy"
    np.save(scans, np.zeros((2, 3, 8), np.float32))
    out = tmp_path / "out.json"
    expect("unknown subject at predict (array)", UnknownSubjectError,
           lambda: predict_run(pretrained / "run", scans, subject="sub-03", output=out, progress=False),
           scans, "synthetic/sub-03", "synthetic/sub-01", "synthetic/sub-02", request=request)
    shard_dir = next((pretrained / "shards").glob("synthetic-*"))
    expect("unknown subject at predict (shards)", UnknownSubjectError,
           lambda: predict_run(pretrained / "run", shard_dir / "test", output=out, progress=False),
           "synthetic/sub-03", "synthetic/sub-01", request=request)
    assert not out.exists()
    assert_nothing_half_written(tmp_path)


def test_run_dir_of_another_recipe_is_refused_and_left_alone(pretrained, tmp_path, request):
    run = tmp_path / "run"
    shutil.copytree(pretrained / "run", run)
    before = tree_bytes(run)
    recipe = _recipe(pretrained, **{"datasets.0.subjects": ["sub-01", "sub-02"], "train.lr": 0.5,
                                    "run.dir": str(run)})
    expect("run directory made by a different recipe", RecipeError, _train(recipe), run, "train.lr: 0.001 → 0.5",
           "nothing is deleted", request=request)
    assert tree_bytes(run) == before  # not one byte changed, nothing deleted


# --------------------------------------------------------------------------- trust model


def test_plugins_come_only_from_entry_points_not_from_the_recipe_folder(tmp_path, monkeypatch):
    """A module lying next to the recipe (or in the working directory) is never imported."""
    marker = tmp_path / "CODE-RAN"
    folder = tmp_path / "recipes"
    folder.mkdir()
    evil = f"import os\nos.mkdir({str(marker)!r})\n"
    for name in ("foundation_synthetic.py", "evil_plugin.py", "conftest.py"):
        (folder / name).write_text(evil)
    (folder / "foundation_synthetic").mkdir()
    (folder / "foundation_synthetic" / "__init__.py").write_text(evil)
    d = tiny_recipe_dict(tmp_path)
    path = _write(folder, d)
    monkeypatch.chdir(folder)
    monkeypatch.setattr(plugins, "_manager", None)
    from foundation.data.shards import plan

    plan(load_recipe(path))
    for entry in [*plugins.dataset_plugins().values(), *plugins.guidance_plugins().values()]:
        assert "(entry point " in entry.origin, entry.origin
    assert not marker.exists()


def test_run_made_before_a_new_recipe_key_still_resumes(pretrained, tmp_path):
    """config.yaml written before ``shards.on_bad_sample`` existed: the missing key takes its default."""
    from foundation.engine.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(pretrained / "run", run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["shards"]["on_bad_sample"]
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    recipe = _recipe(pretrained, **{"datasets.0.subjects": ["sub-01", "sub-02"], "run.dir": str(run)})
    assert Trainer(recipe, progress=False).resume()


# --------------------------------------------------------------------------- issue 16: round 2


def test_duplicate_yaml_keys(tmp_path, capsys, request):
    """Issue 16.7: a key given twice (``train:`` twice, ``seed`` twice) used to let the last one win silently."""
    d = tiny_recipe_dict(tmp_path)
    text = yaml.safe_dump(d, sort_keys=False)
    path = tmp_path / "twice.yaml"
    path.write_text(text + "train:\n  lr: 0.5\n")
    expect("duplicate top-level YAML key", RecipeError, lambda: load_recipe(path), path, "duplicate key 'train'",
           "line", request=request)
    nested = tmp_path / "nested.yaml"
    nested.write_text("name: x\ntrain:\n  seed_like: 1\n  lr: 0.1\n  lr: 0.2\n")
    expect("duplicate nested YAML key", RecipeError, lambda: load_recipe(nested), nested, "duplicate key 'lr'",
           "line 5", request=request)
    assert "duplicate key" in _cli(capsys, "train", str(path), "--no-progress")
    # a merge key (<<) may still be overridden: that is not a duplicate
    merged = tmp_path / "merged.yaml"
    merged.write_text("name: merged\nbase: &b {lr: 0.1, steps: 4}\n")
    with pytest.raises(RecipeError, match="base: unknown key"):
        load_recipe(merged)
    _nothing_made(tmp_path)


@pytest.mark.parametrize("override, key", [
    ("name=../../x", "name"),
    ("name=/tmp/elsewhere", "name"),
    ("datasets.0.name=syn/thetic", "datasets.0.name"),
    ("datasets.0.name=..", "datasets.0.name"),
])
def test_names_are_identifiers_not_paths(tmp_path, capsys, request, override, key):
    """Issue 16.8: ``name=../../x`` used to put the run outside ``runs/`` (and a dataset name with ``/``
    failed after the whole shard build)."""
    path = _write(tmp_path, tiny_recipe_dict(tmp_path))
    value = override.split("=", 1)[1]
    expect(f"name that is a path ({override})", RecipeError, lambda: load_recipe(path, [override]), path,
           f"{key}: {value!r} is not a valid name", request=request)
    assert key in _cli(capsys, "train", str(path), override, "--no-progress")
    _nothing_made(tmp_path)


@pytest.mark.parametrize("override, message", [
    ("train.max_grad_norm=-1", "train.max_grad_norm: must be > 0, got -1.0"),
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("train.lr=.nan", "train.lr: must be a number, not NaN, got nan"),
    ("train.lr=.inf", "train.lr: must be finite, got inf"),
    ("train.weight_decay=-1", "train.weight_decay: must be >= 0, got -1.0"),
    ("model.dropout=2", "model.dropout: must be < 1, got 2.0"),
    ("model.attn_dropout=-0.1", "model.attn_dropout: must be >= 0, got -0.1"),
    ("train.num_workers=-1", "train.num_workers: must be >= 0, got -1"),
    ("model.dim=65536", "model.dim: must be <= 8192, got 65536"),
    ("loss.lambda_orth=.nan", "loss.lambda_orth: must be a number, not NaN, got nan"),
    ("loss.lambda_low=-1", "loss.lambda_low: must be >= 0, got -1.0"),
    ("model.head_hidden=0", "model.head_hidden: must be > 0, got 0"),
    ("model.mlp_ratio=0", "model.mlp_ratio: must be > 0, got 0.0"),
    ("model.volume_channels=[16,0]", "model.volume_channels.1: must be > 0, got 0"),
    ("model.alignment_pool_gib=0", "model.alignment_pool_gib: must be > 0, got 0.0"),
    ("model.alignment_pool_samples=0", "model.alignment_pool_samples: must be > 0, got 0"),
    ("model.alignment_memory_gib=-1", "model.alignment_memory_gib: must be > 0, got -1.0"),
    ("train.warmup_steps=-5", "train.warmup_steps: must be >= 0, got -5"),
    ("seed=-1", "seed: must be >= 0, got -1"),
    ("datasets.0.train_fraction=1.5", "datasets.0.train_fraction: must be <= 1, got 1.5"),
    ("datasets.0.subjects=[]", "datasets.0.subjects: an empty list selects no subject"),
])
def test_values_out_of_range(tmp_path, capsys, request, override, message):
    """Issue 16.6 and 16.14: ranges are checked when the recipe is read (``max_grad_norm=-1`` used to train
    by gradient ascent with exit 0; the others ended in raw tracebacks or were silently accepted)."""
    path = _write(tmp_path, tiny_recipe_dict(tmp_path))
    expect(f"value out of range ({override})", RecipeError, lambda: load_recipe(path, [override]), path, message,
           request=request)
    assert message.split(":")[0] in _cli(capsys, "shard", str(path), override, "--no-progress")
    _nothing_made(tmp_path)


def test_ranges_are_declared_on_the_schema():
    """The ranges live on the dataclass fields as ``annotated_types`` metadata (what pydantic reads)."""
    import typing

    import annotated_types as at

    from foundation.core.config import ModelConfig, TrainConfig

    hints = typing.get_type_hints(TrainConfig, include_extras=True)
    assert at.Gt(0) in hints["lr"].__metadata__
    assert at.Lt(1) in typing.get_type_hints(ModelConfig, include_extras=True)["dropout"].__metadata__
    # a recipe changed in code is checked too
    recipe = _recipe(Path("/nonexistent"))
    recipe.train.max_grad_norm = -1.0
    with pytest.raises(RecipeError, match=r"train\.max_grad_norm: must be > 0"):
        validate_recipe(recipe)


def test_yaml_alias_bomb(tmp_path, request):
    """Issue 16.17: a 2 kB recipe whose aliases expand to 9¹⁰ values took 80 s and 3.1 GB to report."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 11)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join([*lines, "name: *a10"]) + "\n")
    assert path.stat().st_size < 2500
    started = time.time()
    expect("YAML alias bomb", RecipeError, lambda: load_recipe(path), path, "aliases", "alias bomb",
           request=request)
    assert time.time() - started < 5
    # ordinary aliases are fine
    ok = tmp_path / "aliases.yaml"
    ok.write_text("name: ok\ndatasets:\n  - &d {plugin: synthetic, name: a}\n  - {<<: *d, name: b}\n")
    assert [d.id for d in load_recipe(ok).datasets] == ["a", "b"]


@pytest.mark.parametrize("where", ["run.dir", "shards.root"])
def test_unwritable_place_is_reported_before_anything_is_built(tmp_path, request, where):
    """Issue 16.14: ``run.dir`` / ``shards.root`` that cannot be written used to fail only after the whole
    shard build; the first write of the command (its lock) now names the place, before any work."""
    from foundation.core.errors import WriteError

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "below"
    recipe = _recipe(tmp_path, **{where: str(target)})
    expect(f"{where} that cannot be written", WriteError, _train(recipe), "cannot write", blocker, request=request)
    _nothing_made(tmp_path)
    assert not (tmp_path / "shards").exists() and blocker.read_text() == "not a directory"
