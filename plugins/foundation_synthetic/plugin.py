"""Built-in plugins of the synthetic world: the ``synthetic`` dataset and the ``planted`` guidance.

Registered through the ``foundation`` entry-point group in the project's pyproject.toml, exactly as a
third-party package would register its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from foundation.core.api import (
    DatasetInfo,
    DatasetPlugin,
    GuidanceFeatures,
    GuidancePlugin,
    Sample,
    Stimulus,
)
from foundation.core.errors import DataError
from foundation.core.hookspecs import hookimpl
from foundation_synthetic.render import caption, render_image
from foundation_synthetic.world import SyntheticOptions, World


class SyntheticDataset(DatasetPlugin):
    """Seeded multi-subject fMRI world (ROI or volume mode); the default when no real data is here."""

    name = "synthetic"
    version = "5"  # 2: per-subject stimulus streams; 3: ROI tokens in canonical ROI coordinates
    Options = SyntheticOptions
    # semantics / label_offset (issue 13, item 5) at their defaults draw the world of version 5 exactly
    fingerprint_omits_defaults = ("semantics", "label_offset")
    description = "seeded multi-subject synthetic fMRI (ROI tokens or small volumes), planted codes"

    def __init__(self, options: SyntheticOptions, *, root: Path | None = None, seed: int = 0) -> None:
        super().__init__(options, root=root, seed=seed)
        self.world = World(options)

    def info(self) -> DatasetInfo:
        o = self.options
        common = {"label_names": tuple(self.world.label_names), "subjects": self.world.subjects}
        facts = {"generator": "foundation_synthetic", "world_seed": o.world_seed}
        if o.mode == "volume":
            return DatasetInfo(kind="volume", grid=tuple(o.grid), extra=facts, **common)
        names = tuple(f"roi{k + 1}" for k in range(o.n_rois))
        return DatasetInfo(kind="roi", token_shape=(o.n_rois, o.token_dim), token_names=names, extra=facts, **common)

    def samples(self, subject: str) -> Iterator[Sample]:
        data = self.world.subject(subject)
        st = self.world.stimuli
        for i, (row, split) in enumerate(zip(data.stimulus_rows, data.splits)):
            yield Sample(subject=subject, index=i, split=split, stimulus=st.ids[row],
                         fmri=data.fmri[i], labels=st.labels[row])

    def mask(self, subject: str) -> np.ndarray | None:
        return self.world.subject(subject).mask if self.options.mode == "volume" else None

    def stimuli(self, ids: Sequence[str]) -> Iterator[Stimulus]:
        st = self.world.stimuli
        for sid in ids:
            if sid not in st.position:
                raise DataError(f"synthetic world has no stimulus {sid!r}")
            i = st.position[sid]
            yield Stimulus(
                id=sid,
                image=render_image(st.low[i], st.labels[i], size=self.options.image_size,
                                   category_seed=self.options.world_seed),
                text=caption(st.low[i], st.labels[i], self.world.label_names),
                extras={"low": st.low[i], "high": st.high[i]},
            )


class PlantedGuidance(GuidancePlugin):
    """The generator's true codes as guidance: low = planted low-level code, high = semantic code.

    The upper bound of what any real vision/text network could provide on the synthetic world.
    """

    name = "planted"
    needs = ("low", "high")
    description = "the synthetic world's true low/high codes (an oracle guidance)"
    batch_size = 4096

    def encode(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        missing = [s.id for s in stimuli if "low" not in s.extras or "high" not in s.extras]
        if missing:
            raise DataError(
                f"planted guidance needs stimuli with planted codes (the synthetic dataset); "
                f"stimulus {missing[0]!r} has none"
            )
        return GuidanceFeatures(
            low=np.stack([s.extras["low"] for s in stimuli]).astype(np.float32),
            high=np.stack([s.extras["high"] for s in stimuli]).astype(np.float32),
        )


@hookimpl
def foundation_dataset_plugins() -> list[type[DatasetPlugin]]:
    return [SyntheticDataset]


@hookimpl
def foundation_guidance_plugins() -> list[type[GuidancePlugin]]:
    return [PlantedGuidance]
