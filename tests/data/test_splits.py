"""``read_split``: one subject's split read whole, for the closed-form methods and the alignments."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from foundation.data.shards import build_shards
from foundation.data.splits import read_split

from .conftest import VOLUME, make_recipe


def test_a_split_without_its_inputs_keeps_everything_else(tmp_path: Path) -> None:
    """``inputs=False`` (what the guidance basis reads): the same keys, stimuli, labels and guidance, no voxels."""
    index = build_shards(make_recipe(tmp_path, VOLUME, samples_per_shard=16), progress=False)["synthetic"]
    full = read_split(index, "sub-01", "train")
    light = read_split(index, "sub-01", "train", inputs=False)
    assert len(full) == len(light) > 0 and full.x.shape[1] > 0
    assert light.x.shape == (len(full), 0)
    assert light.keys == full.keys and light.stimuli == full.stimuli
    for name in ("y", "low", "high"):
        np.testing.assert_array_equal(getattr(light, name), getattr(full, name))
