"""What a finished run directory recorded: its training curves (``trainer_state.json`` history, else
TensorBoard event files) and its ``metrics.json``."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from foundation.core.errors import CheckpointError

log = logging.getLogger("foundation.plots")


def read_tensorboard_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files under ``log_dir`` (``tag -> sorted (step, value)``); later files
    win for a step logged twice (a resumed run). ``{}`` when tensorboard's event reader is unavailable."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except Exception:  # tensorboard not installed or broken: the curves come from trainer_state.json
        log.info("tensorboard's event reader is not importable; training loss curves are not drawn")
        return {}
    files = sorted(Path(log_dir).rglob("events.out.tfevents.*"), key=lambda p: (p.stat().st_mtime, p.name))
    merged: dict[str, dict[int, float]] = {}
    for path in files:
        try:
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                merged.setdefault(tag, {}).update({int(e.step): float(e.value) for e in acc.Scalars(tag)})
        except Exception as exc:  # a truncated event file of a killed run: use what the others hold
            log.warning("cannot read %s: %s", path, exc)
    return {tag: sorted(values.items()) for tag, values in merged.items()}


def read_curves(run_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, float]]]]:
    """``(val, train)`` curves of a run: validation from the latest checkpoint's history (else the
    TensorBoard logs), training loss terms from the TensorBoard logs."""
    from foundation.engine.checkpoint import latest_checkpoint, read_state

    run_dir = Path(run_dir)
    scalars = read_tensorboard_scalars(run_dir / "logs") if (run_dir / "logs").is_dir() else {}
    val: dict[str, list[tuple[int, float]]] = {}
    ckpt = latest_checkpoint(run_dir)
    history = read_state(ckpt).get("history", []) if ckpt is not None else []
    for name in ("mAP", "AUC"):
        points = [(int(h["step"]), float(h[f"val_{name}"])) for h in history if f"val_{name}" in h]
        if not points:
            points = list(scalars.get(f"val/{name}", []))
        if points:
            val[name] = points
    train = {tag.split("/", 1)[1]: v for tag, v in scalars.items() if tag.startswith("train/") and tag != "train/lr"}
    return val, train


def _run_name(run_dir: Path) -> str:
    return Path(run_dir).resolve().name


def _common_name(run_dirs: Sequence[Path]) -> str:
    """A label for several runs: their names' common prefix (``ss-vit-seed0-…``), else the first name + count."""
    names = [_run_name(d) for d in run_dirs]
    prefix = os.path.commonprefix(names)
    if any(len(n) > len(prefix) and n[len(prefix)] not in "-_" for n in names):  # cut at a whole word
        prefix = prefix[: max(prefix.rfind("-"), prefix.rfind("_"), 0)]
    prefix = prefix.rstrip("-_")
    return f"{prefix}-… ({len(names)} runs)" if prefix else f"{names[0]} + {len(names) - 1} runs"


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: {run_dir} is not a finished run (train it to the end first)")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable: {exc}") from exc


def _per_subject(metrics: Mapping[str, Any], split: str, metric: str, where: Path) -> dict[str, float]:
    try:
        rows = metrics[split]["per_subject"]
    except (KeyError, TypeError):
        raise CheckpointError(f"{where / 'metrics.json'} has no {split!r} per_subject metrics") from None
    return {s: float(m.get(metric, float("nan"))) for s, m in rows.items()}
