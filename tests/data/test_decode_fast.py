"""The zero-copy .npy decode and the single-copy collate give exactly what np.load + the old collate gave."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from foundation.data import loader
from foundation.data.loader import _load_npy, collate, decode
from foundation.core.errors import ShardError


def _npy(a: np.ndarray, version=None) -> bytes:
    buf = io.BytesIO()
    if version is None:
        np.save(buf, a, allow_pickle=False)
    else:
        np.lib.format.write_array(buf, a, version=version, allow_pickle=False)
    return buf.getvalue()


ARRAYS = [
    np.arange(12, dtype=np.float16).reshape(3, 4),
    np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    np.random.default_rng(0).standard_normal(1000).astype(np.float16),
    np.array([0, 1, 1, 0], dtype=np.uint8),
    np.array(3.5, dtype=np.float64),
    np.zeros((0, 5), dtype=np.float16),
    np.arange(6, dtype=">f4").reshape(2, 3),
]


@pytest.mark.parametrize("a", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("version", [None, (2, 0)])
def test_load_npy_equals_np_load_first_and_cached(a, version):
    loader._NPY_HEADERS.clear()
    for _ in range(3):  # miss, then cache hits; a fresh payload object each time
        payload = bytes(bytearray(_npy(a, version)))
        ref = np.load(io.BytesIO(payload), allow_pickle=False)
        got = _load_npy(payload, what="x")
        assert got.dtype == ref.dtype and got.shape == ref.shape
        np.testing.assert_array_equal(got, ref)
        if a.size:
            assert got.base is not None and not got.flags.writeable  # a view of the payload, no copy


def test_load_npy_still_rejects_bad_members():
    loader._NPY_HEADERS.clear()
    good = _npy(np.arange(100, dtype=np.float16))
    _load_npy(good, what="m")  # header now cached
    with pytest.raises(ShardError, match="not a plain .npy array"):
        _load_npy(good[:-10], what="m")  # truncated data, cached header
    with pytest.raises(ShardError, match="not a plain .npy array"):
        _load_npy(b"", what="m")
    with pytest.raises(ShardError, match="not a plain .npy array"):
        _load_npy(b"not an npy file at all", what="m")
    obj = io.BytesIO()
    np.save(obj, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for _ in range(2):
        with pytest.raises(ShardError, match="not a plain .npy array"):
            _load_npy(obj.getvalue(), what="m")  # object arrays: never cached, always refused


def _sample(i: int, *, fmri: np.ndarray, n_labels: int = 5) -> dict:
    rng = np.random.default_rng(i)
    raw = {
        "__key__": f"ds/sub-{i % 2}/{i}", "__url__": "mem://x.tar",
        "fmri.npy": _npy(fmri),
        "labels.npy": _npy((rng.random(n_labels) < 0.5).astype(np.uint8)),
        "low.npy": _npy(rng.standard_normal(7).astype(np.float16)),
        "high.npy": _npy(rng.standard_normal(9).astype(np.float16)),
        "json": f'{{"subject": "sub-{i % 2}"}}'.encode(),
    }
    return decode(raw)


def _old_collate(samples, *, dataset, pad_voxels):
    """The collate of before the zero-copy decode (reference)."""
    ref = [{k: (np.array(v) if isinstance(v, np.ndarray) else v) for k, v in s.items()} for s in samples]
    if pad_voxels is None:
        fmri = torch.from_numpy(np.stack([s["fmri"] for s in ref]))
    else:
        fmri = torch.zeros(len(ref), pad_voxels, dtype=torch.float16)
        for i, s in enumerate(ref):
            fmri[i, : s["fmri"].shape[0]] = torch.from_numpy(s["fmri"])
    return {"fmri": fmri,
            "labels": torch.from_numpy(np.stack([s["labels"] for s in ref]).astype(np.float32)),
            "low": torch.from_numpy(np.stack([s["low"] for s in ref])),
            "high": torch.from_numpy(np.stack([s["high"] for s in ref]))}


def _check_same(batch, ref):
    for name, want in ref.items():
        got = getattr(batch, name)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert torch.equal(got, want), name
        assert got.is_contiguous()
        got.add_(0)  # writable (torch would warn about a non-writable NumPy buffer)


def test_collate_roi_unchanged():
    rng = np.random.default_rng(1)
    samples = [_sample(i, fmri=rng.standard_normal((3, 4)).astype(np.float16)) for i in range(6)]
    batch = collate(samples, dataset="ds", fmri_shape=(3, 4), pad_voxels=None, num_labels=5)
    _check_same(batch, _old_collate(samples, dataset="ds", pad_voxels=None))
    assert batch.subjects == [f"ds/sub-{i % 2}" for i in range(6)]


def test_collate_volume_unchanged_padding_is_zero():
    rng = np.random.default_rng(2)
    samples = [_sample(i, fmri=(rng.standard_normal(n) + 3).astype(np.float16)) for i, n in enumerate((50, 37, 50, 12))]
    batch = collate(samples, dataset="ds", fmri_shape=None, pad_voxels=64, num_labels=5)
    _check_same(batch, _old_collate(samples, dataset="ds", pad_voxels=64))
    assert (batch.fmri[1, 37:] == 0).all() and (batch.fmri[3, 12:] == 0).all()
