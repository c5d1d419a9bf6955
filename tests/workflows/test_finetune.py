"""``foundation finetune``: new subjects by their tokens alone, the backbone frozen byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from foundation.core.errors import RecipeError

DS = "synthetic"


@pytest.fixture
def pretrained(tiny_recipe, tmp_path):
    """A tiny run trained on sub-01 and sub-02 only (sub-03 is held out)."""
    from foundation.workflows.train import train

    recipe = tiny_recipe(**{"run.dir": str(tmp_path / "pre")})
    recipe.datasets[0].subjects = ["sub-01", "sub-02"]
    train(recipe, progress=False)
    return tmp_path / "pre"


def _ft_recipe(tiny_recipe, tmp_path, name="ft", subjects=("sub-03",), **overrides):
    recipe = tiny_recipe(**{"run.dir": str(tmp_path / name), "train.steps": 10, "train.eval_every": 5,
                            "train.checkpoint_every": 5, **overrides})
    recipe.datasets[0].subjects = list(subjects)
    return recipe


def test_finetune_trains_only_the_new_tokens(pretrained, tiny_recipe, tmp_path):
    from foundation.workflows.finetune import finetune

    metrics = json.loads(Path(finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path), progress=False)).read_text())
    dim = 16
    assert metrics["finetune"]["new_subjects"] == [f"{DS}/sub-03"]
    assert metrics["finetune"]["trainable_parameters"] == 2 * dim
    assert metrics["finetune"]["source"] == str(pretrained.resolve())
    assert set(metrics["test"]["per_subject"]) == {f"{DS}/sub-03"}
    before = load_file(str(pretrained / "best" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "best" / "model.safetensors"))
    assert set(after) == set(before)
    for name, tensor in before.items():
        got = after[name]
        if name == "subject_tokens.weight":
            assert got.shape == (3, 2, dim)
            assert torch.equal(got[:2], tensor)  # the old subjects' rows, bit for bit
        else:
            assert torch.equal(got, tensor), name  # every other tensor, bit for bit
    # the new row did train: it differs from the row a fresh, untrained setup draws
    from foundation.engine.surgery import FinetuneSpec
    from foundation.engine.trainer import Trainer

    fresh = Trainer(_ft_recipe(tiny_recipe, tmp_path, name="fresh"), progress=False,
                    finetune=FinetuneSpec(source=pretrained.resolve()))
    assert not torch.equal(fresh.core.subject_tokens.weight[2].detach(), after["subject_tokens.weight"][2])


def test_unfreeze_head_trains_the_head_and_nothing_else(pretrained, tiny_recipe, tmp_path):
    from foundation.workflows.finetune import finetune

    path = finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path), unfreeze=["head"], progress=False)
    metrics = json.loads(Path(path).read_text())
    assert metrics["finetune"]["unfreeze"] == ["head"]
    before = load_file(str(pretrained / "best" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "best" / "model.safetensors"))
    head = [k for k in before if k.startswith(f"heads.{DS}.")]
    assert head and any(not torch.equal(after[k], before[k]) for k in head)
    for k in before:
        if k not in head and k != "subject_tokens.weight":
            assert torch.equal(after[k], before[k]), k
    head_params = sum(before[k].numel() for k in head)
    assert metrics["finetune"]["trainable_parameters"] == 2 * 16 + head_params


def test_unfreeze_head_with_a_shared_label_head_trains_that_one_head(tiny_recipe, tmp_path):
    """``model.label_head: shared``: ``--unfreeze head`` trains the shared head (named ``label_head``)."""
    from foundation.workflows.finetune import finetune
    from foundation.workflows.train import train

    pre = tiny_recipe(**{"run.dir": str(tmp_path / "pre"), "model.label_head": "shared"})
    pre.datasets[0].subjects = ["sub-01", "sub-02"]
    train(pre, progress=False)
    path = finetune(tmp_path / "pre", _ft_recipe(tiny_recipe, tmp_path, **{"model.label_head": "shared"}),
                    unfreeze=["head"], progress=False)
    metrics = json.loads(Path(path).read_text())
    before = load_file(str(tmp_path / "pre" / "best" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "best" / "model.safetensors"))
    head = [k for k in before if k.startswith("label_head.")]
    assert head and not [k for k in before if k.startswith("heads.")]
    assert any(not torch.equal(after[k], before[k]) for k in head)
    assert all(torch.equal(after[k], before[k]) for k in before if k not in head and k != "subject_tokens.weight")
    assert metrics["finetune"]["trainable_parameters"] == 2 * 16 + sum(before[k].numel() for k in head)


def test_finetune_run_evaluates_and_resumes(pretrained, tiny_recipe, tmp_path):
    from foundation.workflows.evaluate import evaluate_run
    from foundation.workflows.finetune import finetune

    recipe = _ft_recipe(tiny_recipe, tmp_path)
    metrics = json.loads(Path(finetune(pretrained, recipe, progress=False)).read_text())
    again = evaluate_run(tmp_path / "ft", split="test")
    assert again["mAP"] == pytest.approx(metrics["test"]["mAP"], abs=1e-6)
    # rerunning the finished fine-tuning resumes from its last checkpoint and gives the same metrics
    rerun = json.loads(Path(finetune(pretrained, recipe, progress=False)).read_text())
    assert rerun["test"]["mAP"] == pytest.approx(metrics["test"]["mAP"], abs=1e-6)


def test_finetune_refuses_what_it_cannot_do(pretrained, tiny_recipe, tmp_path):
    from foundation.core.errors import CheckpointError
    from foundation.engine.surgery import FinetuneSpec
    from foundation.workflows.finetune import finetune

    with pytest.raises(RecipeError, match="no subject that"):
        finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path, subjects=("sub-01",)), progress=False)
    with pytest.raises(RecipeError, match="its source"):
        finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path, name="pre"), progress=False)
    with pytest.raises(CheckpointError, match="not a finished training run"):
        finetune(tmp_path / "nowhere", _ft_recipe(tiny_recipe, tmp_path), progress=False)
    with pytest.raises(RecipeError, match="unknown part"):
        FinetuneSpec(source=pretrained, unfreeze=("encoder",))
    other = _ft_recipe(tiny_recipe, tmp_path, name="other")
    other.datasets[0].options = {**other.datasets[0].options, "token_dim": 4}
    with pytest.raises(RecipeError, match=r"token_shape=\(3, 4\).*token_shape=\(3, 8\).*nothing was built"):
        finetune(pretrained, other, progress=False)
    from foundation.data.shards import plan

    assert not any(b.directory.exists() for b in plan(other))  # refused before building any shard
    assert not (tmp_path / "other").exists()


def test_token_init_mean_starts_new_rows_at_the_pretrained_mean(pretrained, tiny_recipe, tmp_path):
    """``--token-init mean``: the zero-shot guess for a new subject, position by position."""
    from foundation.engine.surgery import FinetuneSpec
    from foundation.engine.trainer import Trainer

    spec = FinetuneSpec(source=pretrained.resolve(), token_init="mean")
    assert FinetuneSpec.from_json(spec.to_json()) == spec
    assert FinetuneSpec.from_json({"source": "x"}).token_init == "random"  # runs made before the option
    trainer = Trainer(_ft_recipe(tiny_recipe, tmp_path), progress=False, finetune=spec)
    table = trainer.core.subject_tokens.weight.detach()
    assert table.shape[0] == 3
    assert torch.allclose(table[2], table[:2].mean(0))
    assert not torch.equal(table[0, 0], table[0, 1])  # two distinct token positions, each averaged on its own
    with pytest.raises(RecipeError, match="--token-init"):
        FinetuneSpec(source=pretrained, token_init="zeros")


def test_check_frozen_catches_a_changed_tensor(pretrained, tiny_recipe, tmp_path):
    from foundation.core.errors import CheckpointError
    from foundation.engine.surgery import FinetuneSpec, check_frozen
    from foundation.engine.trainer import Trainer

    recipe = _ft_recipe(tiny_recipe, tmp_path)

    trainer = Trainer(recipe, progress=False, finetune=FinetuneSpec(source=pretrained.resolve()))
    setup = trainer.finetune
    state = {k: v.clone() for k, v in setup.model.state_dict().items()}
    check_frozen(setup, state)  # untouched: fine
    state["subject_tokens.weight"][0, 0, 0] += 1e-3
    with pytest.raises(CheckpointError, match="subject_tokens.weight"):
        check_frozen(setup, state)


def test_cli_finetune(pretrained, tmp_path, capsys):
    import yaml

    from foundation.cli import main
    from tests.conftest import tiny_recipe_dict

    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["subjects"] = ["sub-03"]
    d["train"].update({"steps": 4, "eval_every": 2, "checkpoint_every": 2})
    d["run"]["dir"] = str(tmp_path / "cli-ft")
    (tmp_path / "ft.yaml").write_text(yaml.safe_dump(d))
    assert main(["finetune", str(pretrained), str(tmp_path / "ft.yaml"), "--no-progress", "--unfreeze", "head"]) == 0
    assert f"metrics: {tmp_path / 'cli-ft' / 'metrics.json'}" in capsys.readouterr().out
    assert (tmp_path / "cli-ft" / "finetune.json").is_file()


def test_zero_shot_scores_the_mean_token_without_training(pretrained, tiny_recipe, tmp_path):
    """``--zero-shot``: no step; the new row is the pre-trained subjects' mean token; best/ holds that model."""
    from foundation.workflows.finetune import finetune

    path = finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path), zero_shot=True, progress=False)
    metrics = json.loads(Path(path).read_text())
    assert metrics["steps"] == 0 and metrics["best_step"] == 0 and metrics["train_seconds"] == 0.0
    assert metrics["finetune"]["zero_shot"] is True and metrics["finetune"]["token_init"] == "mean"
    assert set(metrics["test"]["per_subject"]) == {f"{DS}/sub-03"}
    before = load_file(str(pretrained / "best" / "model.safetensors"))
    after = load_file(str(tmp_path / "ft" / "best" / "model.safetensors"))
    tokens = after["subject_tokens.weight"]
    assert torch.equal(tokens[:2], before["subject_tokens.weight"])
    assert torch.allclose(tokens[2], before["subject_tokens.weight"].mean(0))
    assert all(torch.equal(after[k], before[k]) for k in before if k != "subject_tokens.weight")
    assert not (tmp_path / "ft" / "checkpoints").exists() or not any((tmp_path / "ft" / "checkpoints").iterdir())
    with pytest.raises(RecipeError, match="--zero-shot"):
        finetune(pretrained, _ft_recipe(tiny_recipe, tmp_path, name="bad"), zero_shot=True, token_init="random",
                 unfreeze=["head"], progress=False)
