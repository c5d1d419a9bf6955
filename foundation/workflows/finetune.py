"""``foundation finetune RUN_DIR RECIPE``: add a recipe's new subjects to a trained run's model and
train only their tokens (plus the parts named by ``--unfreeze``); the surgery itself is
:mod:`foundation.engine.surgery`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from foundation.core.errors import CheckpointError, RecipeError
from foundation.engine.surgery import FinetuneSpec, check_before_sharding
from foundation.engine.trainer import Trainer, run_dir_for


def finetune(source: str | Path, recipe, *, unfreeze: Sequence[str] = (), token_init: str | None = None,
             zero_shot: bool = False, progress: bool = True) -> Path:
    """Fine-tune the new subjects of ``recipe`` on the model of run ``source``; returns metrics.json.

    ``token_init``: ``"random"`` or ``"mean"``; ``None`` (default) is ``"mean"`` with ``zero_shot``, else ``"random"``.
    ``zero_shot``: train nothing — the new tokens at the pre-trained subjects' mean, the new subjects'
    alignment maps (``model.alignment``) fitted in closed form as always; the model is saved as ``best/``
    and scored, so ``predict`` and ``evaluate`` work on the run."""
    if token_init is None:
        token_init = "mean" if zero_shot else "random"
    source = Path(source)
    if not (source / "best" / "model.safetensors").is_file():
        raise CheckpointError(f"{source / 'best' / 'model.safetensors'} not found: {source} is not a finished "
                              f"training run (train it with `foundation train RECIPE` first)")
    if run_dir_for(recipe).resolve() == source.resolve():
        raise RecipeError(f"the fine-tuning run would write into its source {source}; pass run.dir=<new directory>")
    spec = FinetuneSpec(source=source.resolve(), unfreeze=tuple(unfreeze), token_init=token_init,
                        zero_shot=zero_shot)
    check_before_sharding(spec.source, recipe)
    trainer = Trainer(recipe, progress=progress, finetune=spec)
    try:
        if zero_shot:
            trainer.save_untrained_as_best()
        else:
            trainer.fit()
        path = trainer.test()
        trainer.accelerator.end_training()
    finally:
        trainer.close()  # the run directory's lock
    return path
