"""``shards.url``: tars streamed from elsewhere (here a ``pipe:`` URL) with only index.json kept locally."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from foundation.core.errors import ShardError


def test_training_reads_tars_through_a_url_template(tiny_recipe, tmp_path):
    from foundation.data.shards import build_shards
    from foundation.workflows.train import train

    local = build_shards(tiny_recipe(), progress=False)["synthetic"].root
    bucket = tmp_path / "bucket"
    shutil.copytree(local, bucket / local.name)
    for tar in local.rglob("*.tar"):
        tar.unlink()  # only index.json stays on this "node"
    url = f"pipe:cat {bucket}/{{dir}}/{{path}}"
    metrics = json.loads(Path(train(tiny_recipe(**{"shards.url": url}), progress=False)).read_text())
    assert metrics["test"]["n"] == 3 * 12
    # the fixed train_fraction subset is listed through the URL too
    from foundation.data.loader import DatasetStream
    from foundation.data.shards import find_shards

    index = find_shards(tiny_recipe(**{"shards.url": url}))["synthetic"]
    per_subject = index.data["counts"]["train"]
    assert DatasetStream(index, train_fraction=0.5).train_count() == sum(math.ceil(n / 2) for n in per_subject.values())
    # without the URL the same recipe cannot find its tars
    with pytest.raises(ShardError, match="does not exist"):
        from foundation.data.index import read_index

        read_index(local)


def test_a_bad_url_template_is_named(tiny_recipe):
    from foundation.data.shards import build_shards, find_shards

    build_shards(tiny_recipe(), progress=False)
    for url, why in (("pipe:cat /x/{dir}", "must contain {path}"), ("s3://b/{bucket}/{path}", "unknown field")):
        with pytest.raises(ShardError, match=why):
            find_shards(tiny_recipe(**{"shards.url": url}))


def test_train_with_a_url_refuses_to_build_missing_shards(tiny_recipe):
    from foundation.workflows.train import train

    with pytest.raises(ShardError, match="index.json"):
        train(tiny_recipe(**{"shards.url": "pipe:cat /nowhere/{dir}/{path}"}), progress=False)
