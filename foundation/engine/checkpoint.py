"""Checkpoints of a run directory.

``checkpoints/step-NNNNNNNN/`` holds Accelerate's full training state (model, optimizer, scheduler,
RNG states) plus ``trainer_state.json``; it is written under a temporary name and renamed, so any
directory with that name is complete.  The latest checkpoint is chosen by the step recorded *inside*
``trainer_state.json``, never by file times.  A save that fails (disk full) removes its temporary
directory and raises :class:`~foundation.core.errors.WriteError`; the earlier checkpoints stay as they were.

Nothing is unpickled unsafely: Accelerate reads the optimizer, scheduler and RNG files with
``torch.load(weights_only=True)``, and :func:`check_rng_states` makes a refused RNG file an error
(Accelerate itself would skip it silently and resume with the wrong random state).

``best/`` holds the weights selected on validation as ``model.safetensors`` plus ``model.json``
(architecture, dataset descriptions, subject vocabulary): enough to rebuild the model anywhere
without pickle.  Every checkpoint carries a copy of ``best/`` as it stood at that step
(``step-NNNNNNNN/best/``), and a resume puts that copy back (:func:`restore_best`): ``best/`` always
belongs to the checkpoint resumed from, never to the steps a killed process ran past it.  A copy equal
to the previous checkpoint's (no better validation in between) is a hard link to it, not a new copy.

Integrity: a checkpoint and ``best/`` each carry ``manifest.json`` (SHA-256 and size of every file,
:mod:`foundation.core.integrity`), written last.  A resume verifies the checkpoint before loading it and
falls back to the latest intact one (:func:`intact_checkpoint`); :func:`load_model` and
:func:`load_weights` verify ``best/``.  Checkpoints and ``best/`` written before manifests existed are
loaded unverified.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_save

from foundation.core.atomic import TMP_PREFIX, atomic_open, remove_stale_tmp, write_json
from foundation.core.config import ModelConfig
from foundation.core.errors import CheckpointError, FoundationError, write_error
from foundation.core.convert import from_dict, to_dict
from foundation.core.integrity import MANIFEST_NAME, manifest_problem, write_manifest

STATE_NAME = "trainer_state.json"


def checkpoint_dirs(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint, sorted by step (read from its state file)."""
    root = Path(run_dir) / "checkpoints"
    out = []
    if not root.is_dir():
        return out
    for d in root.glob("step-*"):
        state = d / STATE_NAME
        try:
            step = int(json.loads(state.read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a complete checkpoint of ours
        out.append((step, d))
    return sorted(out)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoint_dirs(run_dir)
    return found[-1][1] if found else None


#: prefix a damaged checkpoint is renamed with (it no longer matches ``step-*``: kept, never resumed from)
DAMAGED_PREFIX = "damaged-"


def intact_checkpoint(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """``(latest checkpoint whose files match its manifest, [(newer damaged checkpoint, why)])``.

    Every file of a checkpoint is hashed (about a second per GB); a checkpoint without a manifest
    (written before manifests existed) counts as intact, unverified.
    """
    damaged = []
    for _, path in reversed(checkpoint_dirs(run_dir)):
        problem = manifest_problem(path)
        if isinstance(problem, str):
            damaged.append((path, problem))
            continue
        return path, damaged
    return None, damaged


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint ``step-N`` to ``damaged-step-N`` (kept for inspection, never resumed from
    or pruned); returns the new path."""
    checkpoint = Path(checkpoint)
    target = checkpoint.with_name(DAMAGED_PREFIX + checkpoint.name)
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{DAMAGED_PREFIX}{checkpoint.name}.{n}")
    try:
        checkpoint.rename(target)
    except OSError as exc:
        raise write_error(target, exc) from exc
    return target


#: the copy of ``best/`` inside a checkpoint
BEST_NAME = "best"
#: the files of a saved model directory (``best/``)
MODEL_FILES = ("model.safetensors", "model.json")


def save_checkpoint(accelerator, run_dir: Path, step: int, state: dict[str, Any], *, keep: int) -> Path:
    """Save the full training state atomically (all ranks must call this).

    The checkpoint also holds a copy of ``run_dir/best`` (when it exists), so that a resume from it can
    put back the best weights of *its* history (see :func:`restore_best`).
    """
    root = Path(run_dir) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        remove_stale_tmp(root)
        if final.exists():  # a resumed run re-reaching a saved step: identical state, keep the old one
            shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    if final.exists():
        return final
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    except (OSError, RuntimeError, SafetensorError) as exc:  # torch.save reports a full disk as a RuntimeError
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, FoundationError):
            raise
        raise write_error(final, exc) from exc
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        try:
            best = Path(run_dir) / BEST_NAME
            if all((best / name).is_file() for name in MODEL_FILES):
                (tmp / BEST_NAME).mkdir(exist_ok=True)
                same = _unchanged_best_copy(run_dir, best)
                for name in (*MODEL_FILES, MANIFEST_NAME):
                    if (best / name).is_file():
                        _link_or_copy(same / name if same is not None else None, best / name,
                                      tmp / BEST_NAME / name)
            write_json(tmp / STATE_NAME, {**state, "step": step})
            write_manifest(tmp)  # last: it covers every file above, best/ included
            tmp.rename(final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, FoundationError):
                raise
            raise write_error(final, exc) from exc
        for _, old in checkpoint_dirs(run_dir)[:-keep]:
            prune(old)
    accelerator.wait_for_everyone()
    return final


def prune(checkpoint: Path) -> None:
    """Delete an old checkpoint so that a kill half-way never leaves a ``step-*`` with some files gone.

    It is first renamed out of ``step-*`` (one atomic rename) to a ``.tmp-*`` name, which the next save
    clears if this process dies during the deletion."""
    checkpoint = Path(checkpoint)
    doomed = checkpoint.with_name(f"{TMP_PREFIX}pruned-{checkpoint.name}")
    try:
        shutil.rmtree(doomed, ignore_errors=True)  # an earlier prune of the same step that was cut short
        checkpoint.rename(doomed)
    except OSError:
        return  # left in place, still complete: pruned by a later save
    shutil.rmtree(doomed, ignore_errors=True)


def _unchanged_best_copy(run_dir: Path, best: Path) -> Path | None:
    """The latest checkpoint's copy of ``best/`` when ``best/`` has not changed since (same manifest, hence
    the same SHA-256 for each file), else ``None``.  ``best/`` without a manifest is never matched."""
    latest = latest_checkpoint(run_dir)
    if latest is None:
        return None
    copy = latest / BEST_NAME
    try:
        same = (best / MANIFEST_NAME).read_bytes() == (copy / MANIFEST_NAME).read_bytes()
    except OSError:
        return None
    return copy if same and all((copy / name).is_file() for name in MODEL_FILES) else None


def _link_or_copy(previous: Path | None, source: Path, target: Path) -> None:
    """``target`` as a hard link to ``previous`` (the same bytes in an earlier checkpoint) when there is one
    and the file system allows it, else a copy of ``source``.  Safe because foundation never writes a file
    in place: ``best/`` and checkpoints are only ever replaced by renames, so a linked file never changes."""
    if previous is not None:
        try:
            os.link(previous, target)
            return
        except OSError:  # no hard links here (EPERM, EXDEV, ...): copy instead
            pass
    shutil.copyfile(source, target)


def restore_best(checkpoint: Path, run_dir: Path, *, best_step: int) -> None:
    """Make ``run_dir/best`` the one saved with ``checkpoint`` (main process only).

    A process killed after a better validation score but before its next checkpoint left ``best/`` with
    weights of steps the resumed run has not trained yet; they are replaced by the checkpoint's copy, file
    by file and atomically (a kill half-way is repaired by the next resume).  With no validation before the
    checkpoint (``best_step < 0``) ``best/`` is removed.  A checkpoint written before checkpoints carried
    ``best/`` (``best_step >= 0`` and no copy) leaves ``best/`` as it is.
    """
    saved, best = Path(checkpoint) / BEST_NAME, Path(run_dir) / BEST_NAME
    if all((saved / name).is_file() for name in MODEL_FILES):
        for name in (*MODEL_FILES, MANIFEST_NAME):  # the manifest last: it describes the two before it
            if not (saved / name).is_file():  # a copy made before manifests: drop a newer, stale one
                (best / name).unlink(missing_ok=True)
                continue
            if (best / name).is_file() and (best / name).read_bytes() == (saved / name).read_bytes():
                continue
            with atomic_open(best / name) as fh:
                fh.write((saved / name).read_bytes())
    elif best_step < 0 and best.exists():
        for name in (*MODEL_FILES, MANIFEST_NAME):
            (best / name).unlink(missing_ok=True)


#: what Accelerate's ``random_states_<rank>.pkl`` must hold for an exact resume
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def check_rng_states(checkpoint: Path, process_index: int) -> None:
    """Raise :class:`CheckpointError` unless ``random_states_<rank>.pkl`` loads as plain data.

    It is read exactly as Accelerate reads it (``torch.load(weights_only=True)`` with Accelerate's
    allow-list: numbers, arrays, RNG tuples), so a file that would run code when unpickled is refused
    without running it.  Accelerate itself ignores an unreadable RNG file and resumes with the
    current random state, which would silently break exact resumption.
    """
    from accelerate.utils import load

    path = Path(checkpoint) / f"random_states_{process_index}.pkl"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: checkpoint {checkpoint} is incomplete, or was written by fewer "
                              f"processes (no RNG state for process {process_index}); resume with as many "
                              f"processes as wrote it, or pass run.dir=<new directory>")
    try:
        states = load(path)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError, AttributeError) as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 200 else detail[:197] + "..."
        raise CheckpointError(f"{path} is not a plain RNG state file and was not loaded ({type(exc).__name__}: "
                              f"{detail}); a checkpoint holds data only, never code") from exc
    missing = [k for k in RNG_KEYS if not (isinstance(states, dict) and k in states)]
    if missing:
        raise CheckpointError(f"{path} lacks the RNG state(s) {missing}: not a checkpoint written by foundation")


def read_state(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(checkpoint) / STATE_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{checkpoint / STATE_NAME} is unreadable: {exc}") from exc


# --------------------------------------------------------------------------- model files
def save_model(model: torch.nn.Module, directory: Path, *, meta: dict[str, Any]) -> None:
    """Write ``model.safetensors`` + ``model.json`` into ``directory``, replacing both atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_open(directory / "model.safetensors") as fh:
        fh.write(safetensors_save(tensors))
    write_json(directory / "model.json", {**meta, "model": model.config_dict()})
    write_manifest(directory)


def check_saved_model(directory: Path) -> bool:
    """Raise :class:`CheckpointError` naming the file when a file of the saved model ``directory``
    (``best/``) differs from its ``manifest.json``; ``False`` when there is no manifest (nothing checked)."""
    directory = Path(directory)
    problem = manifest_problem(directory, only=(*MODEL_FILES,))
    if isinstance(problem, str):
        raise CheckpointError(f"{problem}: the saved model {directory} was damaged or changed after foundation "
                              f"wrote it; if it is a run's best/, rerun `foundation train` on that run to restore "
                              f"it from the last checkpoint's copy")
    return problem


def load_weights(directory: Path, *, device: str = "cpu") -> dict[str, torch.Tensor]:
    """The verified tensors of ``directory/model.safetensors`` (see :func:`check_saved_model`)."""
    check_saved_model(directory)
    path = Path(directory) / "model.safetensors"
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); rerun to restore it "
                              f"from the last checkpoint's copy") from exc


def load_model(directory: Path, *, device: str | torch.device = "cpu"):
    """Rebuild a model from ``model.json`` and load ``model.safetensors`` (no pickle involved)."""
    from foundation.model import CLIPMUSED

    directory = Path(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    for p in (meta_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"{p} not found: {directory} is not a saved model directory")
    check_saved_model(directory)
    try:
        meta = json.loads(meta_path.read_text())
        spec = dict(meta["model"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{meta_path} does not describe a model: {exc}") from exc
    # validate the architecture with the recipe machinery (unknown keys, wrong types are named)
    spec["model"] = to_dict(from_dict(ModelConfig, spec.get("model"), path=f"{meta_path.name}:model"))
    model = CLIPMUSED.from_config_dict(spec)
    try:
        state = load_file(str(weights_path), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is not a safetensors file: {exc}") from exc
    own = model.state_dict()
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing, extra = sorted(set(own) - set(state) - model.optional_state_keys()), sorted(set(state) - set(own))
    if wrong or missing or extra:
        detail = "; ".join(filter(None, [
            f"shape mismatch for {wrong[0]}: file {tuple(state[wrong[0]].shape)} vs model {tuple(own[wrong[0]].shape)}" if wrong else "",
            f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else ""]))
        raise CheckpointError(f"{weights_path} does not fit the model described in {meta_path}: {detail}")
    model.load_state_dict(state)
    return model.to(device), meta
