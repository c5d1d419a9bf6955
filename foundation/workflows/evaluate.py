"""``foundation evaluate RUN_DIR``: recompute metrics from a run's selected (best) weights.

The figures follow today's schema (headline: the mean over subjects of each subject's figure, plus
``pooled``; :mod:`foundation.objectives.scoring`) for any run, including runs written before it, whose weights
were selected on pooled validation mAP (their ``metrics.json`` has no ``headline`` key)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foundation.core.atomic import write_json
from foundation.core.errors import CheckpointError


def evaluate_run(run_dir: str | Path, *, split: str = "test", output: str | Path | None = None) -> dict[str, Any]:
    """Rebuild the run's data streams and model from ``RUN_DIR`` and return ``split`` metrics."""
    from foundation.engine.checkpoint import load_model
    from foundation.core.recipe import load_recipe
    from foundation.engine.trainer import Trainer

    run_dir = Path(run_dir)
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise CheckpointError(f"{config} not found: {run_dir} is not a run directory")
    recipe = load_recipe(config, [f"run.dir={run_dir}"])
    from foundation.engine.surgery import read_spec

    model, _ = load_model(run_dir / "best")
    trainer = Trainer(recipe, progress=False, finetune=read_spec(run_dir))
    try:
        if model.vocab != trainer.core.vocab:
            raise CheckpointError(f"{run_dir / 'best'} was trained on subjects {model.vocab[:3]}… but the run's "
                                  f"recipe now yields {trainer.core.vocab[:3]}…")
        trainer.core.load_state_dict(model.state_dict())
        metrics = trainer.evaluate(split)
    finally:
        trainer.close()  # the run directory's lock
    if metrics is not None and output is not None:
        write_json(output, {split: metrics})
    return metrics
