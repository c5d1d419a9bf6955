"""The Accelerate training loop (:class:`Trainer`): build the shards if missing, train with periodic
validation and atomic checkpoints, resume from the latest checkpoint when rerun, select the validation
step with the best mean over subjects of each subject's mAP and write ``metrics.json``.  Runs unchanged on one CPU, one GPU, or many processes.
The workflows that drive it are :mod:`foundation.workflows.train` and :mod:`foundation.workflows.finetune`.

Length (~640 lines, over the ~400 guide): one class, the loop, with the resume and run-directory checks
it relies on; splitting it would separate the state that exact resumption depends on.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import pickle
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from foundation.core.atomic import remove_stale_tmp, write_json
from foundation.core.config import Recipe
from foundation.core.locks import hold
from foundation.core.errors import (CheckpointError, FoundationError, NonFiniteError, RecipeError, ShardError,
                                    UnknownSubjectError)
from foundation.engine.optim import NonFiniteStepGuard, build_adam
from foundation.engine.surgery import SPEC_NAME as FINETUNE_SPEC
from foundation.engine.surgery import FinetuneSpec
from foundation.core.convert import to_dict
from foundation.core.recipe import save_recipe, with_defaults
from foundation.objectives.scoring import metrics_from_predictions, selection_score

log = logging.getLogger("foundation.train")

#: recipe keys that may change between a run and its resumption without changing its results
#: (``train.num_workers`` is not one: each DataLoader worker draws and shuffles its own stream, so the
#: batch order, and the results, depend on it)
RESUMABLE_CHANGES = {"run.dir", "train.log_every", "train.eval_batch_size", "train.background_loader",
                     "train.shard_cache_mib", "train.max_skipped_steps"}


#: the file that marks a directory as a run directory made by foundation (only such a directory, or an
#: empty one, is ever written into)
RUN_MARKER = ".foundation-run"


def run_dir_for(recipe: Recipe) -> Path:
    return Path(recipe.run.dir) if recipe.run.dir else Path("runs") / f"{recipe.name}-seed{recipe.seed}"


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) for x in d):
        out = {}
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: d}


def check_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """Refuse a directory that foundation did not make (unless empty), and one made by a different recipe.

    A run directory carries :data:`RUN_MARKER`; one written before the marker existed is recognised by its
    ``config.yaml`` (and then compared like any other).  Anything else that is not empty is the user's.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"run.dir: {run_dir} exists and is not a directory")
    if run_dir.is_dir() and not (run_dir / RUN_MARKER).is_file() and not (run_dir / "config.yaml").is_file():
        found = sorted(p.name for p in run_dir.iterdir())
        if found:
            shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
            raise RecipeError(f"run.dir: {run_dir} is not a run directory made by foundation (no {RUN_MARKER}) "
                              f"and is not empty (it holds {shown}); pass run.dir=<new or empty directory> "
                              f"(nothing was touched)")
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    try:
        raw = yaml.safe_load(saved.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RecipeError(f"run directory {run_dir}: {saved} is unreadable ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); pass run.dir=<new directory> "
                          f"(nothing is deleted)") from exc
    old, new = _flatten(with_defaults(raw)), _flatten(to_dict(recipe))  # keys added since the run: their defaults
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in diff[:5])
        raise RecipeError(f"run directory {run_dir} was created by a different recipe ({shown}); "
                          f"pass run.dir=<new directory> to start a new run (nothing is deleted)")


def check_subjects(recipe: Recipe, indices: dict[str, Any]) -> None:
    """Every subject a recipe names (``datasets[].subjects``) must be in its dataset's shards."""
    for i, cfg in enumerate(recipe.datasets):
        if not cfg.subjects:
            continue
        index = indices[cfg.id]
        known = list(index.data["subjects"])
        unknown = [s for s in cfg.subjects if s not in known]
        if unknown:
            raise UnknownSubjectError(f"datasets.{i}.subjects: {unknown} not in dataset {cfg.id!r}, whose shards "
                                      f"{index.root} hold the subjects {known}")


def check_splits(recipe: Recipe, dataset: str, index: Any, subjects: list[str]) -> None:
    """The recipe's subjects of ``dataset`` need samples in every split (validation selects the best step,
    test is reported), and a training set at least one batch large; raise before anything is trained."""
    counts = {split: index.count(split, set(subjects)) for split in ("train", "val", "test")}
    for split, n in counts.items():
        if n == 0:
            raise ShardError(f"dataset {dataset!r}: the {split} split of subjects {subjects} is empty "
                             f"(shards {index.root}: train {counts['train']}, val {counts['val']}, test "
                             f"{counts['test']} samples); the dataset needs more stimuli per subject, or "
                             f"other subjects, before it can be trained on")
    if counts["train"] < recipe.train.batch_size:
        raise RecipeError(f"train.batch_size: {recipe.train.batch_size} is larger than the training set of "
                          f"dataset {dataset!r} ({counts['train']} samples for subjects {subjects}, shards "
                          f"{index.root})")


class _NonFiniteWatch:
    """Finds the first step whose training loss is not finite without a device sync per step.

    :meth:`see` records, on the device, the first such step (and keeps the step's batch description and
    loss terms); :meth:`check` reads it back (one sync) and raises :class:`NonFiniteError` naming the step,
    a sample key, its shard and the non-finite terms.  The loop checks at every log, validation and
    checkpoint step, so nothing non-finite is ever logged as a result, selected as best or checkpointed.
    """

    def __init__(self, device: torch.device, recipe: Recipe) -> None:
        self.first = torch.full((), -1, dtype=torch.long, device=device)
        self.recipe = recipe
        self.seen: dict[int, tuple[Any, dict[str, torch.Tensor]]] = {}

    def see(self, step: int, loss: torch.Tensor, terms: dict[str, torch.Tensor], batch: Any) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad & (self.first < 0), torch.full_like(self.first, step), self.first)
        described = (batch.dataset, len(batch.keys), batch.keys[0], batch.urls[0] if batch.urls else "?")
        self.seen.setdefault(step, (described, {k: v.detach() for k, v in terms.items()}))  # no batch kept

    def check(self) -> None:
        step = int(self.first)  # the one sync
        if step < 0:
            self.seen.clear()
            return
        (dataset, n, key, shard), terms = self.seen[step]
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v))] or ["loss"]
        raise NonFiniteError(
            f"step {step}: the training loss is not finite (non-finite term(s): {', '.join(bad)}) on "
            f"{n} samples of dataset {dataset!r} (first {key}, shard {shard}); the inputs are finite, so training diverged: lower train.lr "
            f"(now {self.recipe.train.lr:g}), keep train.max_grad_norm set, or check the loss weights (loss.*); "
            f"on a CPU it has also come from oneDNN's wrong weight gradient of a 3-D convolution over a map "
            f"not larger than its kernel (docs/RESULTS.md §4k); "
            f"the last checkpoint is intact")


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _allow_another_precision(precision: str) -> None:
    """Let this process build an Accelerator with another mixed precision than an earlier Trainer's.

    Accelerate keeps one process-wide state and refuses a second ``Accelerator(mixed_precision=...)`` that
    differs from the first ("AcceleratorState has already been initialized"), so a notebook or sweep
    script training a float32 and a bf16 recipe one after the other stopped at the second.  Only that
    state is reset; the distributed one (process group, ranks) is kept.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != precision:
        AcceleratorState._reset_state(reset_partial_state=False)


def _on_main_then_everyone(accelerator, fn) -> None:
    """Run ``fn`` on the main process; if it raises, every rank raises (no rank waits forever)."""
    from accelerate.utils import broadcast_object_list

    error = None
    if accelerator.is_main_process:
        try:
            fn()
        except Exception as exc:  # re-raised below on the main process with its traceback
            error = exc
    if accelerator.num_processes > 1:
        box = [None if error is None else f"{type(error).__name__}: {error}"]
        broadcast_object_list(box, from_process=0)
        if box[0] is not None and error is None:
            raise FoundationError(f"the main process failed while preparing the run: {box[0]}")
    if error is not None:
        raise error


@dataclasses.dataclass
class TrainState:
    """What the loop needs besides Accelerate's state to resume exactly."""

    step: int = 0
    best_step: int = -1
    best_score: float = -math.inf
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: seconds spent in the training loop up to ``step``, summed over every process that trained this run
    #: (a killed process counts up to its last checkpoint: the steps after it are trained again)
    train_seconds: float = 0.0
    #: optimizer steps skipped so far because the gradient was not finite (``train.max_skipped_steps``)
    skipped_steps: int = 0


class Trainer:
    """Holds the pieces of one run; :meth:`fit` trains, :meth:`test` writes metrics.json."""

    def __init__(self, recipe: Recipe, *, progress: bool = True, finetune: FinetuneSpec | None = None,
                 rebuild: bool = False) -> None:
        """``finetune``: start from a trained run's model, add the recipe's new subjects and train only
        their tokens (see :mod:`foundation.engine.surgery`); the recipe's ``model`` section is then unused.
        ``rebuild``: rebuild the recipe's shards first (refused when the run directory already has
        checkpoints made from the old ones)."""
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        self.recipe = recipe
        self.finetune_spec = finetune
        self.run_dir = run_dir_for(recipe)
        self.progress = progress
        t = recipe.train
        precision = _mixed_precision(t.mixed_precision)
        _allow_another_precision(precision)
        self.accelerator = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=t.grad_accum,
            step_scheduler_with_optimizer=False,
            log_with="tensorboard",
            # a step uses one dataset's adapter and head: the others get no gradient that step. No buffer
            # broadcast before every forward (DDP's default): the model's buffers are constants once built (the
            # alignment maps, fitted on every rank from the same training samples, and index tables; no
            # BatchNorm), broadcast from rank 0 once after prepare() below, and an aligned volume model's maps
            # are gigabytes (benchmarks/bench_ddp_buffers.py)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=len(recipe.datasets) > 1,
                                                           broadcast_buffers=False)],
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
        )
        acc = self.accelerator
        self._lock = None

        def take_lock() -> None:  # the main process holds the run directory until close()
            self._lock = hold(self.run_dir, what="run directory")

        _on_main_then_everyone(acc, take_lock)
        try:
            self._setup(recipe, finetune=finetune, progress=progress, rebuild=rebuild)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the run directory's lock (the process ending releases it too)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _setup(self, recipe: Recipe, *, finetune: FinetuneSpec | None, progress: bool, rebuild: bool = False) -> None:
        """Check the run directory, build or find the shards, build the model and optimizer."""
        from accelerate.utils import set_seed

        from foundation.data.loader import DatasetStream
        from foundation.data.shards import build_shards, find_shards, plan
        from foundation.data.voxels import VoxelIndexBank
        from foundation.model import CLIPMUSED

        acc, t = self.accelerator, recipe.train
        check_run_dir(self.run_dir, recipe)  # read-only: every rank raises the same error, none waits

        from foundation.engine.checkpoint import checkpoint_dirs

        if rebuild and recipe.shards.url:
            raise RecipeError("--rebuild: the shards are read from shards.url; rebuild them where they were built")
        if rebuild and checkpoint_dirs(self.run_dir):
            raise RecipeError(f"--rebuild: {self.run_dir} already has checkpoints trained on the old shards; "
                              f"pass run.dir=<new directory> (or delete {self.run_dir}) to train on rebuilt ones")

        def prepare_shards() -> None:
            if recipe.shards.url:
                if find_shards(recipe) is None:
                    missing = [str(b.directory / "index.json") for b in plan(recipe)
                               if not (b.directory / "index.json").is_file()]
                    raise ShardError(f"shards.url is set but {missing[0]} is missing: copy each dataset's "
                                     f"index.json (and masks/) from where the shards were built")
                return
            build_shards(recipe, progress=progress, rebuild=rebuild)  # reuses finished ones, saying so

        def prepare_run_dir() -> None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if not (self.run_dir / RUN_MARKER).is_file():  # first: from now on foundation owns the directory
                write_json(self.run_dir / RUN_MARKER, {"made_by": "foundation", "recipe": recipe.name})
            # temporary files of a killed run (ours only): a half-written file or checkpoint, a half-pruned checkpoint
            for folder in (self.run_dir, self.run_dir / "best", self.run_dir / "checkpoints"):
                remove_stale_tmp(folder)
            save_recipe(recipe, self.run_dir / "config.yaml")
            if self.alignment_report:
                from foundation.engine.align import export_alignments

                export_alignments(self.core, self.run_dir / "alignment")  # not the DDP wrapper
                write_json(self.run_dir / "alignment" / "fit.json", self.alignment_report)
            if finetune is not None:
                write_json(self.run_dir / FINETUNE_SPEC, finetune.to_json())

        # Shards: made once by the main process, read by all.  The run directory is written only once
        # the recipe has proven buildable (subjects, model), so a failed start leaves nothing that would
        # block the corrected rerun.
        _on_main_then_everyone(acc, prepare_shards)
        self.indices = find_shards(recipe)
        check_subjects(recipe, self.indices)

        self.streams: dict[str, DatasetStream] = {}
        self.infos = {}
        self.banks: dict[str, VoxelIndexBank] = {}
        vocab = []
        for cfg in recipe.datasets:
            index = self.indices[cfg.id]
            subjects = list(cfg.subjects) if cfg.subjects else list(index.data["subjects"])
            self.streams[cfg.id] = DatasetStream(index, subjects=subjects, train_fraction=cfg.train_fraction)
            check_splits(recipe, cfg.id, index, subjects)
            self.infos[cfg.id] = dataclasses.replace(index.info, subjects=tuple(subjects))
            vocab += [f"{cfg.id}/{s}" for s in subjects]
            if index.info.kind == "volume":
                self.banks[cfg.id] = VoxelIndexBank(index, subjects, device=acc.device)
        self.weights = [cfg.weight for cfg in recipe.datasets]

        set_seed(recipe.seed)
        self.finetune = None
        if finetune is None:
            model_cfg = recipe.model
            if recipe.loss.guidance_loss == "mapping":  # the map's output sizes come from the shards
                first = self.indices[recipe.datasets[0].id]
                model_cfg = dataclasses.replace(model_cfg, mapping_dims=[first.feature_dim("low"),
                                                                         first.feature_dim("high")])
            if model_cfg.alignment != "none":  # the alignment's target sizes come from the shards too
                first = self.indices[recipe.datasets[0].id]
                model_cfg = dataclasses.replace(model_cfg, guidance_dims=[first.feature_dim("low"),
                                                                          first.feature_dim("high")])
            # a volume dataset's alignment maps hold as many rows as its subjects' most in-mask voxels, not the grid
            rows = {cfg.id: max(int(self.indices[cfg.id].data["voxels"][s]) for s in self.infos[cfg.id].subjects)
                    for cfg in recipe.datasets
                    if model_cfg.alignment != "none" and self.infos[cfg.id].kind == "volume"}
            self.model = CLIPMUSED(model_cfg, self.infos, vocab, alignment_rows=rows)
            param_groups: list[dict[str, Any]] = [{"params": list(self.model.parameters())}]
            to_align = {cfg.id: list(self.infos[cfg.id].subjects) for cfg in recipe.datasets}
        else:
            from foundation.engine.surgery import prepare

            self.finetune = prepare(finetune, self.infos, vocab, weight_decay=t.weight_decay)
            self.model, param_groups = self.finetune.model, self.finetune.param_groups
            to_align = {}
            for key in self.finetune.new_subjects:
                ds, subject = key.split("/", 1)
                to_align.setdefault(ds, []).append(subject)
        from foundation.data.tars import cache_budget

        # processes that may hold tars on this machine: every local rank, plus each rank's loader workers (or its
        # background loader: forked, it shares the rank's cache until pages are copied)
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
        per_rank = 1 + max(t.num_workers, int(t.background_loader))
        self.cache_bytes, why = cache_budget(t.shard_cache_mib, processes=local_ranks * per_rank)
        if why and acc.is_main_process:
            print(f"warning: {why}", file=sys.stderr)
        self.alignment_report = {}
        if self.model.alignments:  # closed-form per-subject maps: fitted before any training step
            from foundation.engine.align import fit_alignments

            say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress and acc.is_main_process else None
            self.alignment_report = fit_alignments(self.model, self.streams, to_align, fit_basis=finetune is None,
                                                   log=say)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        optimizer = build_adam(param_groups, lr=t.lr, weight_decay=t.weight_decay, device=acc.device)
        warmup = max(t.warmup_steps, 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
        with warnings.catch_warnings():  # DDP's broadcast_buffers=False (see the Accelerator above)
            warnings.filterwarnings("ignore", message=".*broadcast_buffers.*deprecated", category=FutureWarning)
            self.model, self.optimizer, self.scheduler = acc.prepare(self.model, optimizer, scheduler)
        if acc.num_processes > 1:  # the one buffer sync DDP's broadcast_buffers=False leaves out: rank 0's, once
            for buffer in self.core.buffers():
                torch.distributed.broadcast(buffer, src=0)
        self.state = TrainState()
        _on_main_then_everyone(acc, prepare_run_dir)

    # ------------------------------------------------------------------ helpers
    @property
    def core(self):
        """The unwrapped model (no DDP wrapper)."""
        return self.accelerator.unwrap_model(self.model)

    def _forward(self, model, batch):
        idx = self.core.subject_index(batch.subjects).to(self.accelerator.device)
        voxel_index = self.banks[batch.dataset](batch.subjects) if batch.dataset in self.banks else None
        return model(batch.dataset, batch.fmri.float(), idx, voxel_index=voxel_index)

    def _segment_iterators(self, segment: int) -> dict[str, list[Any]]:
        """One endless batch iterator per (dataset, micro-batch) of this rank.

        Every micro-batch of a step reads its own stream, seeded by its *global slot*
        ``micro * num_processes + rank``.  A step therefore sees the same ``grad_accum ×
        num_processes`` batches however they are spread over processes: 2 processes with
        ``grad_accum=1`` train on exactly the batches of 1 process with ``grad_accum=2``.
        """
        t, acc = self.recipe.train, self.accelerator
        return {
            name: [iter(stream.train_batches(
                t.batch_size, seed=self.recipe.seed, segment=segment,
                rank=micro * acc.num_processes + acc.process_index,
                shuffle_buffer=t.shuffle_buffer, num_workers=t.num_workers, pin_memory=acc.device.type == "cuda",
                background=t.background_loader, cache_bytes=self.cache_bytes))
                for micro in range(t.grad_accum)]
            for name, stream in self.streams.items()
        }

    def _pick_dataset(self, step: int) -> str:
        names = list(self.streams)
        if len(names) == 1:
            return names[0]
        # same choice on every rank: seeded by (seed, step) only
        return random.Random(f"mix/{self.recipe.seed}/{step}").choices(names, weights=self.weights)[0]

    # ------------------------------------------------------------------ resume
    def resume(self) -> bool:
        from safetensors import SafetensorError

        from foundation.engine.checkpoint import (check_rng_states, intact_checkpoint, read_state, restore_best,
                                                   set_aside)

        ckpt, damaged = intact_checkpoint(self.run_dir)  # every rank checks: all raise alike, none waits
        if damaged and ckpt is None:
            path, why = damaged[0]
            raise CheckpointError(f"{why}: checkpoint {path} is damaged and no earlier checkpoint is intact, so the "
                                  f"run cannot resume; pass run.dir=<new directory> to train again (nothing was "
                                  f"changed)")
        if ckpt is None:
            return False
        if damaged:
            self.accelerator.wait_for_everyone()  # every rank has chosen before a checkpoint is renamed
            if self.accelerator.is_main_process:
                for path, why in damaged:
                    moved = set_aside(path)
                    print(f"warning: {why}: checkpoint {path.name} is damaged; moved it to {moved} and resuming "
                          f"from the intact {ckpt.name} instead", file=sys.stderr)
                    log.warning("checkpoint %s is damaged (%s); set aside as %s, resuming from %s",
                                path, why, moved, ckpt)
            self.accelerator.wait_for_everyone()
        raw = read_state(ckpt)
        saved = raw.get("model", {})
        if saved.get("vocab") != self.core.vocab or saved.get("datasets") != self.core.config_dict()["datasets"]:
            raise CheckpointError(f"{ckpt} holds a model for other subjects or datasets than this recipe builds "
                                  f"({len(saved.get('vocab', []))} vs {len(self.core.vocab)} subjects); "
                                  f"pass run.dir=<new directory>")
        ours, theirs = self.core.config_dict()["model"], saved.get("model")
        if isinstance(theirs, dict):  # keys added to ModelConfig since the checkpoint take their defaults
            from foundation.core.config import ModelConfig

            theirs = {**dataclasses.asdict(ModelConfig()), **theirs}
        if theirs != ours:
            theirs = theirs if isinstance(theirs, dict) else {}
            diff = ", ".join(f"model.{k}: {theirs.get(k)!r} in the checkpoint, {v!r} now"
                             for k, v in ours.items() if theirs.get(k) != v)
            raise CheckpointError(f"{ckpt} holds a model of another shape ({diff}); pass run.dir=<new directory>")
        for rank in range(self.accelerator.num_processes):  # every rank checks all: all raise, none waits
            check_rng_states(ckpt, rank)
        try:
            self.accelerator.load_state(str(ckpt))
        except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError,
                SafetensorError) as exc:  # weights_only refuses a pickle that would run code
            detail = " ".join(str(exc).split())
            detail = detail if len(detail) <= 300 else detail[:297] + "..."
            raise CheckpointError(f"cannot restore {ckpt}: {type(exc).__name__}: {detail}") from exc
        self.state = TrainState(step=raw["step"], best_step=raw["best_step"],
                                best_score=raw["best_score"], history=raw["history"],
                                train_seconds=float(raw.get("train_seconds", 0.0)),
                                skipped_steps=int(raw.get("skipped_steps", 0)))
        if self.accelerator.is_main_process:  # best/ of this checkpoint's history, not of a killed process'
            restore_best(ckpt, self.run_dir, best_step=self.state.best_step)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            print(f"resuming {self.run_dir} from {ckpt.name} (step {self.state.step})", file=sys.stderr)
            if self.state.history and "val_pooled_mAP" not in self.state.history[0]:
                print(f"note: {ckpt.name} was written before selection on the mean over subjects: its best step "
                      f"({self.state.best_step}) was chosen on pooled validation mAP, later steps are compared "
                      f"with that score; retrain in a new run.dir for today's rule throughout", file=sys.stderr)
        return True

    # ------------------------------------------------------------------ loop
    def fit(self) -> None:
        from foundation.core.progress import progress
        from foundation.engine.checkpoint import save_checkpoint, save_model
        from foundation.objectives.losses import clip_mused_loss

        acc, t, r = self.accelerator, self.recipe.train, self.recipe
        self.resume()
        if self.state.step < t.steps:  # a rerun of a finished run adds no TensorBoard files
            acc.init_trackers("tb", config={"recipe": r.name, "seed": r.seed})
        bar = progress(total=t.steps, initial=self.state.step, desc=f"train {r.name}", unit="step",
                       enabled=self.progress and acc.is_local_main_process)
        iterators = None
        running: dict[str, torch.Tensor] = {}
        n_running = 0
        watch = _NonFiniteWatch(acc.device, r)
        # float16's gradient scaler skips non-finite steps itself; every other precision gets the guard
        guard = NonFiniteStepGuard(self.optimizer, acc.device) if acc.scaler is None else None
        skipped_before = self.state.skipped_steps  # steps skipped by the processes before this one
        t0, before = time.perf_counter(), self.state.train_seconds  # time of the processes before this one
        self.model.train()
        while self.state.step < t.steps:
            step = self.state.step
            if iterators is None or step % t.checkpoint_every == 0:
                iterators = self._segment_iterators(step // t.checkpoint_every)
            name = self._pick_dataset(step)
            for micro in range(t.grad_accum):
                batch = next(iterators[name][micro]).to(acc.device)
                with acc.accumulate(self.model):
                    with acc.autocast():
                        out = self._forward(self.model, batch)
                    loss, terms = clip_mused_loss(out, batch.labels, batch.low, batch.high, r.loss)
                    watch.see(step + 1, loss, terms, batch)
                    acc.backward(loss)
                    grad_norm = None
                    if acc.sync_gradients and t.max_grad_norm:
                        grad_norm = acc.clip_grad_norm_(self.model.parameters(), t.max_grad_norm)
                    elif acc.sync_gradients and guard is not None:
                        grad_norm = torch.nn.utils.get_total_norm(
                            [p.grad for p in self.model.parameters() if p.grad is not None])
                    if guard is None:
                        self.optimizer.step()
                    else:
                        guard.step(self.optimizer, grad_norm, step=step + 1)
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in terms.items():
                    running[k] = running.get(k, 0) + v.detach().float()
                n_running += 1
            self.scheduler.step()
            self.state.step = step = step + 1
            bar.update(1)

            if step == t.steps or not (step % t.log_every and step % t.eval_every and step % t.checkpoint_every):
                watch.check()  # before anything of this step is logged, selected or saved
                if guard is not None:
                    self._check_skipped(guard, skipped_before, step)
            if step % t.log_every == 0 or step == t.steps:
                values = {f"train/{k}": float(v) / n_running for k, v in running.items()}  # syncs here only
                values["train/lr"] = self.scheduler.get_last_lr()[0]
                acc.log(values, step=step)
                bar.set_postfix(loss=f"{values['train/loss']:.4f}")
                running, n_running = {}, 0
            if step % t.eval_every == 0 or step == t.steps:
                metrics = self.evaluate("val")
                if acc.is_main_process:
                    # selected on the mean over subjects of each subject's val mAP (objectives.scoring)
                    score = selection_score(metrics)
                    acc.log({"val/mAP": metrics["mAP"], "val/AUC": metrics["AUC"],
                             "val/hamming": metrics["hamming"], "val/pooled_mAP": metrics["pooled"]["mAP"]},
                            step=step)
                    self.state.history.append({"step": step, "val_mAP": metrics["mAP"], "val_AUC": metrics["AUC"],
                                               "val_pooled_mAP": metrics["pooled"]["mAP"]})
                    if score > self.state.best_score:
                        self.state.best_score, self.state.best_step = score, step
                        save_model(self.core, self.run_dir / "best", meta={"step": step, "val": metrics})
                    bar.write(f"step {step}: val mAP {metrics['mAP']:.4f} (subject mean; pooled "
                              f"{metrics['pooled']['mAP']:.4f}) AUC {metrics['AUC']:.4f} "
                              f"(best {self.state.best_score:.4f} @ {self.state.best_step})")
                self._sync_state()
                self.model.train()
            if step % t.checkpoint_every == 0 or step == t.steps:
                self.state.train_seconds = before + time.perf_counter() - t0
                state = {**dataclasses.asdict(self.state), "model": self.core.config_dict()}
                save_checkpoint(acc, self.run_dir, step, state, keep=t.keep_checkpoints)
        bar.close()
        self.train_seconds = before + time.perf_counter() - t0
        if self.finetune is not None:
            from foundation.engine.surgery import check_frozen

            check_frozen(self.finetune, self.core.state_dict())

    def _check_skipped(self, guard: NonFiniteStepGuard, before: int, step: int) -> None:
        """Record the steps ``guard`` skipped (one sync); warn about new ones; stop past ``train.max_skipped_steps``."""
        count, first = guard.total()
        total = before + count
        if total > self.state.skipped_steps:
            log.warning("step %d: %d optimizer step(s) skipped so far (the first in this process at step %d): the "
                        "gradient was not finite, so the parameters were left as they were (train.max_skipped_steps: "
                        "%d)", step, total, first, self.recipe.train.max_skipped_steps)
        self.state.skipped_steps = total
        limit = self.recipe.train.max_skipped_steps
        if total > limit:
            where = f" (the first in this process at step {first})" if first >= 0 else ""
            raise NonFiniteError(
                f"step {step}: {total} optimizer steps had a non-finite gradient{where}, more than "
                f"train.max_skipped_steps ({limit}); each was skipped, so the parameters and the last checkpoint are "
                f"finite. The loss stayed finite, so the backward pass overflowed: lower train.lr (now "
                f"{self.recipe.train.lr:g}) or keep train.max_grad_norm set; on a CPU, oneDNN's weight gradient of a "
                f"7³ stride-2 convolution is wrong on maps of 5-7 voxels (docs/RESULTS.md §4k: the volume "
                f"patchifier's stem pads such maps itself; a plugin's own model may not). A higher "
                f"train.max_skipped_steps resumes the run from the last checkpoint")

    def _sync_state(self) -> None:
        """Broadcast the main process' best-score bookkeeping to every rank."""
        from accelerate.utils import broadcast_object_list

        if self.accelerator.num_processes > 1:
            box = [dataclasses.asdict(self.state)]
            broadcast_object_list(box, from_process=0)
            self.state = TrainState(**box[0])

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, split: str) -> dict[str, dict[str, Any]] | None:
        """Probabilities of every sample of ``split`` (gathered on the main process, else ``None``)."""

        acc, model = self.accelerator, self.core
        was_training = model.training
        model.eval()
        local: list[tuple[str, str, np.ndarray, np.ndarray]] = []
        for name, stream in self.streams.items():
            for batch in stream.eval_batches(split, self.recipe.train.eval_batch_size, rank=acc.process_index,
                                             world_size=acc.num_processes):
                batch = batch.to(acc.device)
                with acc.autocast():
                    out = self._forward(model, batch)
                probs = torch.sigmoid(out.logits.float()).cpu().numpy()
                labels = batch.labels.cpu().numpy()
                if not np.isfinite(probs).all():
                    row = int(np.flatnonzero(~np.isfinite(probs).all(axis=1))[0])
                    weights = [k for k, v in model.state_dict().items() if v.is_floating_point()
                               and not bool(torch.isfinite(v).all())]
                    cause = (f"the model's weights hold non-finite values ({weights[0]}"
                             f"{f' and {len(weights) - 1} more' if len(weights) > 1 else ''})" if weights
                             else "the inputs are finite, so the model overflowed")
                    raise NonFiniteError(f"{split} prediction of sample {batch.keys[row]} (shard "
                                         f"{batch.urls[row] if batch.urls else '?'}) is not finite: {cause}")
                local += [(name, k, p, y) for k, p, y in zip(batch.keys, probs, labels)]
        model.train(was_training)
        gathered = acc.gather_for_metrics(local, use_gather_object=True)
        if not acc.is_main_process:
            return None
        out: dict[str, dict[str, Any]] = {}
        for name, stream in self.streams.items():
            rows = [x for x in gathered if x[0] == name]
            keys = [x[1] for x in rows]
            expected = stream.count(split)
            if len(keys) != expected or len(set(keys)) != expected:
                raise ShardError(f"evaluation of {name!r} {split} read {len(keys)} samples "
                                 f"({len(set(keys))} distinct) but the shards hold {expected}")
            order = np.argsort(keys)
            out[name] = {
                "keys": [keys[i] for i in order],
                "subjects": ["/".join(keys[i].split("/")[:2]) for i in order],
                "probs": np.stack([rows[i][2] for i in order]),
                "labels": np.stack([rows[i][3] for i in order]),
            }
        return out

    def evaluate(self, split: str) -> dict[str, Any] | None:
        """Metrics of ``split`` in the metrics.json schema (main process; others get ``None``)."""
        preds = self.predict(split)
        return None if preds is None else metrics_from_predictions(preds, self.infos)

    def save_untrained_as_best(self) -> None:
        """Zero-shot fine-tuning (no step): save the model as built — the pre-trained weights, the new subjects'
        starting tokens and fitted maps — as ``best/`` (step 0, scored on validation), so :meth:`test`,
        ``predict`` and ``evaluate`` read it as any run's best."""
        from foundation.engine.checkpoint import save_model

        metrics = self.evaluate("val")
        if self.accelerator.is_main_process:
            self.state.best_score, self.state.best_step = selection_score(metrics), 0
            save_model(self.core, self.run_dir / "best", meta={"step": 0, "val": metrics, "zero_shot": True})
        self.train_seconds = 0.0
        self._sync_state()
        self.accelerator.wait_for_everyone()

    def test(self) -> Path:
        """Load the best weights, evaluate val and test, write ``metrics.json``; returns its path."""
        from foundation.engine.checkpoint import load_weights

        acc = self.accelerator
        best = self.run_dir / "best" / "model.safetensors"
        acc.wait_for_everyone()
        if best.is_file():
            state = load_weights(best.parent)  # checked against best/manifest.json when there is one
            bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
            if bad:
                raise NonFiniteError(f"{best} holds non-finite weights ({bad[0]}); it is damaged: rerun to restore "
                                     f"it from the last checkpoint's copy (best/ is put back on resume)")
            self.core.load_state_dict(state)  # CPU tensors, copied onto the device
        results = {split: self.evaluate(split) for split in ("val", "test")}
        path = self.run_dir / "metrics.json"
        zero_shot = self.finetune_spec is not None and self.finetune_spec.zero_shot
        if acc.is_main_process:
            provenance = {name: idx.data["guidance"] for name, idx in self.indices.items()}
            random_weights = any(
                g.get("provenance", {}).get("random_weights", False) for p in provenance.values() for g in p.values())
            write_json(path, {
                **results,
                "best_step": self.state.best_step,
                "selected_on": "val mAP, mean over subjects of each subject's mAP (foundation.objectives.scoring)",
                "steps": 0 if zero_shot else self.recipe.train.steps,
                "recipe": self.recipe.name,
                "seed": self.recipe.seed,
                "model_tokens": self.recipe.model.tokens,
                "parameters": self.n_params,
                "train_seconds": getattr(self, "train_seconds", None),
                # optimizer steps skipped because their gradient was not finite (train.max_skipped_steps)
                "skipped_steps": self.state.skipped_steps,
                "num_processes": acc.num_processes,
                # what train.mixed_precision resolved to on this machine ("auto": bf16 on a GPU that has it)
                "device": acc.device.type,
                "mixed_precision": acc.mixed_precision,
                "guidance": provenance,
                "random_weights": random_weights,
                "shards": {name: str(idx.root) for name, idx in self.indices.items()},
                **({"finetune": {**self.finetune.info(), "source": str(self.finetune_spec.source),
                                 "unfreeze": list(self.finetune_spec.unfreeze),
                                 "token_init": self.finetune_spec.token_init,
                                 "zero_shot": self.finetune_spec.zero_shot}} if self.finetune else {}),
            })
        acc.wait_for_everyone()
        return path

