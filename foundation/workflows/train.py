"""``foundation train RECIPE``: build the shards if missing, train (or resume) the recipe's run and
write its ``metrics.json`` (the loop itself is :class:`foundation.engine.trainer.Trainer`)."""

from __future__ import annotations

from pathlib import Path

from foundation.core.config import Recipe
from foundation.engine.trainer import Trainer


def train(recipe: Recipe, *, progress: bool = True, rebuild: bool = False) -> Path:
    """Train (or resume) the recipe's run; returns the path of its metrics.json.  ``rebuild``: rebuild
    the recipe's shards first (see :func:`foundation.data.shards.build_shards`)."""
    trainer = Trainer(recipe, progress=progress, rebuild=rebuild)
    try:
        trainer.fit()
        path = trainer.test()
        trainer.accelerator.end_training()  # closes trackers and the process group: last
    finally:
        trainer.close()  # the run directory's lock
    return path
