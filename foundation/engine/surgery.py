"""``foundation finetune RUN_DIR RECIPE``: add new subjects to a trained model by their tokens alone.

The pre-trained run's selected weights (``RUN_DIR/best``) are loaded, the new subjects named by
RECIPE are appended to the token table, and every other tensor is frozen: only the new subjects'
token rows receive gradient (the old rows are masked, and the token group has no weight decay, so
Adam leaves them bit for bit).  ``--unfreeze head`` / ``--unfreeze adapter`` also train the label
head / input adapter of the recipe's datasets.  Per-subject preprocessing (e.g. the NSD plugin's
PCA per ROI) is fitted on the new subject's own training data when RECIPE's shards are built, exactly
as for pre-training.  The result is a new run directory with its own ``metrics.json``; after training
the frozen tensors are compared with the source, byte for byte, and any difference is an error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from foundation.core.api import DatasetInfo
from foundation.core.errors import CheckpointError, RecipeError

UNFREEZABLE = ("head", "adapter")
#: how a new subject's token rows start: ``random`` (the token table's own initialisation) or ``mean``
#: (the mean of the pre-trained subjects' rows, position by position: the zero-shot guess)
TOKEN_INITS = ("random", "mean")
SPEC_NAME = "finetune.json"


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """Where the pre-trained model comes from and what besides the new tokens may train."""

    source: Path
    unfreeze: tuple[str, ...] = ()
    token_init: str = "random"
    #: no training step: the new tokens stay at the pre-trained subjects' mean (``token_init: mean``);
    #: with ``model.alignment`` the new subjects' maps are still fitted in closed form from their data
    zero_shot: bool = False

    def __post_init__(self) -> None:
        bad = sorted(set(self.unfreeze) - set(UNFREEZABLE))
        if bad:
            raise RecipeError(f"--unfreeze: unknown part(s) {bad}; choose from {list(UNFREEZABLE)}")
        if self.token_init not in TOKEN_INITS:
            raise RecipeError(f"--token-init must be one of {list(TOKEN_INITS)}, got {self.token_init!r}")
        if self.zero_shot and (self.token_init != "mean" or self.unfreeze):
            raise RecipeError("--zero-shot trains nothing: it takes --token-init mean (the pre-trained subjects' "
                              f"mean token) and no --unfreeze (got --token-init {self.token_init}"
                              f"{', --unfreeze ' + ','.join(self.unfreeze) if self.unfreeze else ''})")

    def to_json(self) -> dict[str, Any]:
        return {"source": str(self.source), "unfreeze": list(self.unfreeze), "token_init": self.token_init,
                "zero_shot": self.zero_shot}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FinetuneSpec:
        # runs fine-tuned before token_init / zero_shot existed started from random rows and trained
        return cls(source=Path(d["source"]), unfreeze=tuple(d.get("unfreeze", ())),
                   token_init=d.get("token_init", "random"), zero_shot=bool(d.get("zero_shot", False)))


def read_spec(run_dir: Path) -> FinetuneSpec | None:
    """The spec a fine-tuning run was made with (``None`` for a pre-training run)."""
    path = Path(run_dir) / SPEC_NAME
    if not path.is_file():
        return None
    try:
        return FinetuneSpec.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from exc


def _check_compatible(ds: str, ours: DatasetInfo, theirs: DatasetInfo, source: Path, *,
                      what: str = "the recipe's shards have", hint: str = "") -> None:
    for field in ("kind", "token_shape", "grid", "label_names"):
        a, b = getattr(ours, field), getattr(theirs, field)
        if (tuple(a) if a is not None else None) != (tuple(b) if b is not None else None):
            raise RecipeError(f"dataset {ds!r}: {what} {field}={a!r} but the model in "
                              f"{source} was trained with {field}={b!r}{hint}")


def check_before_sharding(source: Path, recipe) -> None:
    """Refuse, before any shard is built, a recipe whose datasets the source model cannot take: a
    dataset the model lacks, or one whose plugin describes (``info()``) another input kind, token
    shape, grid or label set.  Datasets whose shards already exist are checked later, from them."""
    from foundation.data.index import INDEX_NAME
    from foundation.data.shards import plan, plugin_errors
    from foundation.model.clip_mused import CLIPMUSED

    meta_path = Path(source) / "best" / "model.json"
    try:
        infos = CLIPMUSED.from_config_dict(json.loads(meta_path.read_text())["model"]).infos
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path} does not describe a model: {exc}") from exc
    for build in plan(recipe):
        ds = build.config.id
        if ds not in infos:
            raise RecipeError(f"dataset {ds!r} is not in the pre-trained model of {source} "
                              f"(it has {sorted(infos)}); a new dataset needs pre-training")
        if (build.directory / INDEX_NAME).is_file():
            continue
        with plugin_errors(f"dataset plugin {build.config.plugin!r} (dataset {ds!r}) raised in info()", build.plugin):
            info = build.plugin.info()
        _check_compatible(ds, info, infos[ds], Path(source), what=f"plugin {build.config.plugin!r} describes",
                          hint=" (nothing was built; set the dataset's options so that the plugin's info() "
                               "matches the model, e.g. a fixed token width instead of one chosen from the data)")


@dataclasses.dataclass
class FinetuneSetup:
    """The grown model, what trains, and the facts metrics.json records."""

    model: nn.Module
    param_groups: list[dict[str, Any]]
    new_subjects: list[str]
    source_state: dict[str, torch.Tensor]
    trainable: dict[str, str]  # parameter name -> "new rows" | "all"

    def info(self) -> dict[str, Any]:
        return {"new_subjects": self.new_subjects, "trainable": self.trainable,
                "trainable_parameters": self.trainable_parameters()}

    def trainable_parameters(self) -> int:
        params = dict(self.model.named_parameters())
        total = 0
        for name, how in self.trainable.items():
            p = params[name]
            total += (len(self.new_subjects) * p[0].numel()) if how == "new rows" else p.numel()
        return total


def prepare(spec: FinetuneSpec, infos: Mapping[str, DatasetInfo], vocab: Sequence[str], *,
            weight_decay: float) -> FinetuneSetup:
    """Load ``spec.source``'s best model, add the subjects of ``vocab`` it lacks, freeze the rest."""
    from foundation.engine.checkpoint import load_model

    model, _ = load_model(Path(spec.source) / "best")
    if model.cfg.tokens == "shared":
        raise RecipeError(f"{spec.source} is an MS-SMODEL run (model.tokens: shared): it has no subject tokens "
                          f"to fine-tune")
    for ds, info in infos.items():
        if ds not in model.infos:
            raise RecipeError(f"dataset {ds!r} is not in the pre-trained model of {spec.source} "
                              f"(it has {sorted(model.infos)}); a new dataset needs pre-training")
        _check_compatible(ds, info, model.infos[ds], spec.source)
    known = set(model.vocab)
    new = [k for k in vocab if k not in known]
    if not new:
        raise RecipeError(f"the recipe names no subject that {spec.source} lacks (all of {list(vocab)[:5]} are "
                          f"known): fine-tuning adds new subjects; set datasets[].subjects to the new ones")
    source_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n_old = len(model.vocab)
    model.add_subjects(new)
    if spec.token_init == "mean":
        with torch.no_grad():
            table = model.subject_tokens.weight  # (S, tokens_per_subject, dim)
            table[n_old:] = table[:n_old].mean(0, keepdim=True)

    for p in model.parameters():
        p.requires_grad_(False)
    tokens = model.subject_tokens.weight
    tokens.requires_grad_(True)
    keep_old = torch.zeros(tokens.shape[0], 1, 1)
    keep_old[n_old:] = 1.0
    tokens.register_hook(lambda g: g * keep_old.to(device=g.device, dtype=g.dtype))
    trainable = {"subject_tokens.weight": "new rows"}
    extra: list[nn.Parameter] = []
    for part in spec.unfreeze:
        for ds in infos:
            # label_head=shared: every dataset's head is the one shared module (unfrozen once)
            prefix, module = model.head_for(ds) if part == "head" else (f"adapters.{ds}", model.adapters[ds])
            for name, p in module.named_parameters():
                if not p.requires_grad:
                    p.requires_grad_(True)
                    extra.append(p)
                    trainable[f"{prefix}.{name}"] = "all"
    # no weight decay on the token table: decay would move the frozen rows
    groups = [{"params": [tokens], "weight_decay": 0.0}]
    if extra:
        groups.append({"params": extra, "weight_decay": weight_decay})
    return FinetuneSetup(model=model, param_groups=groups, new_subjects=new, source_state=source_state,
                         trainable=trainable)


def _is_alignment_row_table(name: str) -> bool:
    """Per-subject alignment buffers (one row per subject): ``alignments.<ds>.{weight,mean,fitted}``."""
    return name.startswith("alignments.") and name.rsplit(".", 1)[-1] in ("weight", "mean", "fitted")


def check_frozen(setup: FinetuneSetup, state: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every frozen tensor of ``state`` equals the source's, byte for byte."""
    n_old = setup.source_state["subject_tokens.weight"].shape[0]
    changed = []
    for name, before in setup.source_state.items():
        after = state[name].detach().cpu()
        if name == "subject_tokens.weight" or _is_alignment_row_table(name):
            after = after[:n_old]  # new subjects' rows: trained tokens, fitted alignments
            if _is_alignment_row_table(name) and after.dim() >= 2 and after.shape[1] > before.shape[1]:
                # volume maps widened for a newcomer with more voxels: the known maps gain zero rows only
                if after[:, before.shape[1]:].any():
                    changed.append(name)
                    continue
                after = after[:, : before.shape[1]]
        elif setup.trainable.get(name) == "all":
            continue
        if after.shape != before.shape or not torch.equal(after, before):
            changed.append(name)
    if changed:
        raise CheckpointError(f"fine-tuning changed frozen tensors {changed[:5]}: this is a bug, please report it")

