"""Subject scaling: every subject owns exactly ``2 × dim`` parameters and nothing else grows.

Models with 9, 100 and 1000 subjects (one ROI dataset, and an ROI + a volume dataset) must differ
only in the subject token table, and growing a 9-subject model to 1000 with ``add_subjects`` must
give the same parameter count as building it with 1000 while leaving every other tensor
byte-identical.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from foundation.core.api import DatasetInfo
from foundation.core.config import ModelConfig
from foundation.model import CLIPMUSED

DIM = 32
TOKEN_TABLE = "subject_tokens.weight"
COUNTS = (9, 100, 1000)
CFG = ModelConfig(dim=DIM, depth=2, heads=4, head_hidden=16, tokens="subject", volume_channels=[4, 8])
LABELS = ("a", "b", "c")
ROI_SHAPE = (5, 7)
GRID = (13, 17, 11)


def _subject_ids(n: int) -> tuple[str, ...]:
    return tuple(f"sub-{i:04d}" for i in range(n))


def _roi_info(n: int) -> DatasetInfo:
    return DatasetInfo(kind="roi", label_names=LABELS, subjects=_subject_ids(n), token_shape=ROI_SHAPE)


def _volume_info(n: int) -> DatasetInfo:
    return DatasetInfo(kind="volume", label_names=LABELS[:2], subjects=_subject_ids(n), grid=GRID)


def _layout(n: int, *, two_datasets: bool) -> tuple[dict[str, DatasetInfo], list[str]]:
    """``n`` subjects in total: all in ``nsd``, or split between ``nsd`` (ROI) and ``hcp`` (volume)."""
    if not two_datasets:
        infos = {"nsd": _roi_info(n)}
    else:
        infos = {"nsd": _roi_info(n - n // 2), "hcp": _volume_info(n // 2)}
    vocab = [f"{ds}/{s}" for ds, info in infos.items() for s in info.subjects]
    assert len(vocab) == n
    return infos, vocab


def _build(n: int, *, two_datasets: bool, seed: int = 0) -> CLIPMUSED:
    infos, vocab = _layout(n, two_datasets=two_datasets)
    torch.manual_seed(seed)
    return CLIPMUSED(CFG, infos, vocab)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().numpy().tobytes()


def _assert_same_except_table(before: Mapping[str, torch.Tensor], after: Mapping[str, torch.Tensor],
                              *, old_rows: int) -> None:
    """Every state-dict tensor is byte-identical; the token table keeps its first ``old_rows`` rows."""
    assert after.keys() == before.keys()
    for name, old in before.items():
        new = after[name]
        if name == TOKEN_TABLE:
            assert old.shape[0] == old_rows
            new = new[:old_rows]
        assert new.dtype == old.dtype and new.shape == old.shape, name
        assert _bytes(new) == _bytes(old), name


@pytest.mark.parametrize("two_datasets", [False, True], ids=["roi", "roi+volume"])
def test_parameter_count_grows_by_exactly_two_dim_per_subject(two_datasets):
    models = {n: _build(n, two_datasets=two_datasets) for n in COUNTS}
    counts = {n: _n_params(m) for n, m in models.items()}
    assert counts[1000] - counts[9] == 991 * 2 * DIM
    assert counts[100] - counts[9] == 91 * 2 * DIM
    assert counts[1000] - counts[100] == 900 * 2 * DIM

    shapes = {n: _shapes(m) for n, m in models.items()}
    for n in COUNTS:
        assert shapes[n].keys() == shapes[9].keys()
        differing = {name for name in shapes[9] if shapes[n][name] != shapes[9][name]}
        assert differing == ({TOKEN_TABLE} if n != 9 else set()), n
        assert shapes[n][TOKEN_TABLE] == (n, 2, DIM)
        assert models[n].vocab == _layout(n, two_datasets=two_datasets)[1]


@pytest.mark.parametrize("two_datasets", [False, True], ids=["roi", "roi+volume"])
def test_add_subjects_9_to_1000_matches_building_with_1000(two_datasets):
    _, small_vocab = _layout(9, two_datasets=two_datasets)
    _, big_vocab = _layout(1000, two_datasets=two_datasets)
    model = _build(9, two_datasets=two_datasets)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    others = {name: p for name, p in model.named_parameters() if name != TOKEN_TABLE}

    # the model keeps its 9-subject DatasetInfo; only the vocabulary (token rows) grows
    new_ids = [k for k in big_vocab if k not in set(small_vocab)]
    assert len(new_ids) == 991
    model.add_subjects(new_ids)

    built = _build(1000, two_datasets=two_datasets)
    assert _n_params(model) == _n_params(built)
    assert _n_params(model) - sum(t.numel() for t in before.values()) == 991 * 2 * DIM
    assert _shapes(model) == _shapes(built)
    assert sorted(model.vocab) == sorted(built.vocab) and model.vocab[:9] == small_vocab
    assert model.subject_tokens.weight.shape == (1000, 2, DIM)

    _assert_same_except_table(before, model.state_dict(), old_rows=9)
    # the non-token Parameters are the very same objects (an optimizer over them stays valid)
    assert all(p is others[name] for name, p in model.named_parameters() if name != TOKEN_TABLE)

    # the grown model runs for an added subject of every dataset
    model.eval()
    with torch.no_grad():
        out = model("nsd", torch.randn(2, *ROI_SHAPE), model.subject_index([new_ids[0], small_vocab[0]]))
    assert out.logits.shape == (2, len(LABELS))
    if two_datasets:
        added_hcp = next(k for k in new_ids if k.startswith("hcp/"))
        n_vox = GRID[0] * GRID[1] * GRID[2]
        voxel_index = torch.arange(40).repeat(2, 1) * 7 % n_vox
        with torch.no_grad():
            out = model("hcp", torch.randn(2, 40), model.subject_index([added_hcp, "hcp/sub-0000"]),
                        voxel_index=voxel_index)
        assert out.logits.shape == (2, 2)
