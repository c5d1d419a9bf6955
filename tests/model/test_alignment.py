"""Per-subject closed-form input alignments (``foundation.model.alignment``): the maths and the module."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


def test_ridge_alignment_undoes_a_per_subject_linear_code():
    """Two subjects see the same signal through different (mirrored, rotated) codes; aligned, they agree."""
    from foundation.model.alignment import fit_guidance_ridge

    rng = np.random.default_rng(0)
    signal = rng.normal(size=(400, 6))  # the shared space (the guidance targets)
    aligned = []
    for s in range(2):
        code = np.linalg.qr(rng.normal(size=(6, 6)))[0] * np.where(rng.random(6) < 0.5, -1, 1)
        x = signal @ code.T @ rng.normal(size=(6, 20)) + 0.05 * rng.normal(size=(400, 20)) + 3.0
        mean, weight, info = fit_guidance_ridge(x[:300], signal[:300])
        assert weight.shape == (20, 6) and mean.shape == (20,) and info["alpha"] > 0
        aligned.append((x[300:] - mean) @ weight)
    for a in aligned:
        assert np.corrcoef(a.ravel(), signal[300:].ravel())[0, 1] > 0.99
    # the raw inputs of the two subjects disagree; their aligned versions agree
    assert np.corrcoef(aligned[0].ravel(), aligned[1].ravel())[0, 1] > 0.98


def test_encoding_alignment_recovers_the_shared_space_and_beats_ridge_on_few_noisy_samples():
    """Inverting an encoding model: correct on plenty of data; from few samples of a noisy subject whose
    inputs outnumber them, closer to the truth than the backward ridge map (its reason to exist)."""
    from foundation.model.alignment import FITTERS, fit_guidance_encoding, fit_guidance_ridge

    assert FITTERS["guidance-encoding"] is fit_guidance_encoding
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(1200, 6))
    code = rng.normal(size=(6, 60))
    noise_sd = rng.uniform(0.5, 3.0, size=60)  # inputs of very different reliability
    x = signal @ code + noise_sd * rng.normal(size=(1200, 60)) + 2.0
    test = slice(1000, None)
    mean, weight, info = fit_guidance_encoding(x[:1000], signal[:1000])
    assert weight.shape == (60, 6) and mean.shape == (60,) and info["alpha"] > 0
    assert np.corrcoef(((x[test] - mean) @ weight).ravel(), signal[test].ravel())[0, 1] > 0.95
    few = slice(0, 20)  # 20 samples, 60 inputs
    scores = {}
    for name, fit in (("encoding", fit_guidance_encoding), ("ridge", fit_guidance_ridge)):
        m, w, _ = fit(x[few], signal[few])
        scores[name] = np.corrcoef(((x[test] - m) @ w).ravel(), signal[test].ravel())[0, 1]
    assert scores["encoding"] > scores["ridge"] + 0.02, scores
    with pytest.raises(ValueError, match="at least 3"):
        fit_guidance_encoding(x[:2], signal[:2])


def test_pca_ridge_alignment_cuts_a_low_rank_subjects_noise_directions_and_beats_ridge():
    """Voxels that are a rank-5 image of the signal plus heavy noise in every voxel: the reduced-rank map picks a
    rank near 5 by leave-one-out and predicts held-out targets better than ridge over all voxels."""
    from foundation.model.alignment import FITTERS, fit_guidance_pca_ridge, fit_guidance_ridge

    assert FITTERS["guidance-pca-ridge"] is fit_guidance_pca_ridge
    rng = np.random.default_rng(4)
    latent = rng.normal(size=(1000, 5))  # what drives the subject's "areas"
    signal = latent @ rng.normal(size=(5, 8)) + 0.3 * rng.normal(size=(1000, 8))  # the guidance targets
    x = latent @ rng.normal(size=(5, 300)) + 3.0 * rng.normal(size=(1000, 300)) + 1.0  # 300 voxels, noisy
    train, test = slice(0, 200), slice(200, None)
    errors = {}
    for name, fit in (("pca-ridge", fit_guidance_pca_ridge), ("ridge", fit_guidance_ridge)):
        mean, weight, info = fit(x[train], signal[train])
        assert weight.shape == (300, 8) and mean.shape == (300,) and info["alpha"] > 0
        errors[name] = float((((x[test] - mean) @ weight - signal[test]) ** 2).mean())
        if name == "pca-ridge":
            assert 4 <= info["rank"] <= 12, info
    assert errors["pca-ridge"] < 0.9 * errors["ridge"], errors


def test_pca_ridge_alignment_at_full_rank_is_the_ridge_alignment():
    """With no reduced rank to try, the fit through all components is ridge's (same alpha grid, same LOO)."""
    from foundation.model.alignment import fit_guidance_pca_ridge, fit_guidance_ridge

    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 25)) * rng.uniform(0.5, 2.0, 25) + 2.0
    t = x[:, :3] @ rng.normal(size=(3, 4)) + 0.5 * rng.normal(size=(60, 4))
    m1, w1, i1 = fit_guidance_pca_ridge(x, t, ranks=())
    m2, w2, i2 = fit_guidance_ridge(x, t)
    assert i1["rank"] == 0 and i1["alpha"] == i2["alpha"]
    np.testing.assert_allclose(m1, m2)
    np.testing.assert_allclose(w1, w2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fitter", ["fit_guidance_ridge", "fit_guidance_pca_ridge", "fit_guidance_encoding"])
def test_every_fitter_takes_a_single_input_and_inputs_that_never_change(fitter):
    """Edge subjects: one input feature (scikit-learn drops the axis of a one-column target, which broke the
    encoding fit) and inputs constant over every training sample (no component for the reduced rank to keep, which
    stopped the PCA fit with a scikit-learn message about 0 features): a finite map of the right shape, and for the
    constant subject a zero one (it carries nothing)."""
    from foundation.model import alignment

    fit = getattr(alignment, fitter)
    rng = np.random.default_rng(2)
    t = rng.normal(size=(30, 4))
    x = t[:, :1] + 0.3 * rng.normal(size=(30, 1))
    mean, weight, _ = fit(x, t)
    assert mean.shape == (1,) and weight.shape == (1, 4) and np.isfinite(weight).all()
    mean, weight, info = fit(np.full((30, 6), 2.5), t)
    assert weight.shape == (6, 4) and not weight.any() and np.isfinite(mean).all()
    assert fitter != "fit_guidance_pca_ridge" or info["rank"] == 0


def test_guidance_basis_has_unit_mean_variance():
    from foundation.model.alignment import guidance_basis

    f = np.random.default_rng(1).normal(size=(200, 10)) * np.arange(1, 11)
    centre, proj = guidance_basis(f, 4)
    z = (f - centre) @ proj
    assert proj.shape == (10, 4)
    assert np.mean(z.var(0, ddof=1)) == pytest.approx(1.0, rel=1e-4)
    assert np.allclose(z.mean(0), 0, atol=1e-4)
    assert np.argmax(np.abs(proj[:, 0])) == 9  # the first axis is the largest-variance feature


def _module(n_subjects=3, features=12, dims=(5, 7), k=4):
    from foundation.model.alignment import SubjectAlignment, guidance_basis

    rng = np.random.default_rng(2)
    m = SubjectAlignment(n_subjects, features, guidance_dims=dims, dim=k)
    m.set_basis(guidance_basis(rng.normal(size=(50, dims[0])), k), guidance_basis(rng.normal(size=(50, dims[1])), k))
    return m, rng


def test_forward_applies_each_subjects_own_map():
    m, rng = _module()
    maps = [(rng.normal(size=12).astype(np.float32), rng.normal(size=(12, 8)).astype(np.float32)) for _ in range(3)]
    for row, (mean, weight) in enumerate(maps):
        m.set_subject(row, mean, weight)
    x = torch.randn(5, 3, 4)  # (B, tokens, dim) of an ROI dataset, 12 values per sample
    idx = torch.tensor([0, 2, 1, 2, 0])
    out = m(x, idx)
    assert out.shape == (5, 2, 4)
    for b, row in enumerate(idx.tolist()):
        mean, weight = maps[row]
        expect = (x[b].reshape(-1).numpy() - mean) @ weight
        assert np.allclose(out[b].reshape(-1).numpy(), expect, atol=1e-5)
    with pytest.raises(ValueError, match="12 input values"):
        m(torch.randn(2, 13), torch.tensor([0, 1]))


def test_unfitted_subjects_are_refused_by_name_and_growing_keeps_rows():
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED
    from foundation.core.api import DatasetInfo

    info = DatasetInfo(kind="roi", label_names=("a", "b"), subjects=("s1", "s2"), token_shape=(3, 4))
    cfg = ModelConfig(dim=16, depth=1, heads=2, head_hidden=8, alignment="guidance-ridge", alignment_dim=4,
                      guidance_dims=[5, 7])
    model = CLIPMUSED(cfg, {"d": info}, ["d/s1", "d/s2"])
    assert model.adapters["d"].n_tokens == 2 and model.adapters["d"].token_dim == 4
    al = model.alignments["d"]
    al.set_subject(0, np.zeros(12, np.float32), np.ones((12, 8), np.float32))
    model("d", torch.randn(2, 3, 4), model.subject_index(["d/s1", "d/s1"]))  # fitted: fine
    with pytest.raises(ValueError, match=r"\['d/s2'\] have no fitted input alignment"):
        model("d", torch.randn(2, 3, 4), model.subject_index(["d/s1", "d/s2"]))
    before = {k: v.clone() for k, v in al.state_dict().items()}
    model.add_subjects(["d/s3"])
    assert len(al) == 3 and not bool(al.fitted[2])
    for name in ("weight", "mean", "fitted"):
        assert torch.equal(getattr(al, name)[:2], before[name])
    # the maps are buffers: fitted, never trained, and no parameter per subject besides the tokens
    assert not any(n.startswith("alignments.") for n, _ in model.named_parameters())


def test_alignment_refuses_missing_sizes_and_oversized_volume_maps():
    from foundation.core.api import DatasetInfo
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED

    roi = DatasetInfo(kind="roi", label_names=("a",), subjects=("s",), token_shape=(2, 2))
    with pytest.raises(ValueError, match="guidance_dims"):
        CLIPMUSED(ModelConfig(dim=8, depth=1, heads=2, alignment="guidance-ridge"), {"d": roi}, ["d/s"])
    vol = DatasetInfo(kind="volume", label_names=("a",), subjects=("s",), grid=(8, 8, 8))
    with pytest.raises(ValueError, match="model.alignment_memory_gib=.*Raise it"):  # a full-resolution volume, in miniature
        CLIPMUSED(ModelConfig(dim=8, depth=1, heads=2, alignment="guidance-ridge", guidance_dims=[3, 3],
                              alignment_memory_gib=1000 / 2**30), {"v": vol}, ["v/s"])


def test_volume_alignment_maps_each_subjects_own_in_mask_voxels_whatever_the_padding():
    """Volume datasets: a subject's map covers its own V_s in-mask voxels; the batch pads to V_max ≤ grid size."""
    from foundation.core.api import DatasetInfo
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED

    vol = DatasetInfo(kind="volume", label_names=("a", "b"), subjects=("s1", "s2"), grid=(4, 4, 4))
    torch.manual_seed(0)
    model = CLIPMUSED(ModelConfig(dim=8, depth=1, heads=2, head_hidden=8, alignment="guidance-ridge",
                                  alignment_dim=3, guidance_dims=[3, 3]), {"v": vol}, ["v/s1", "v/s2"]).eval()
    al = model.alignments["v"]
    assert al.ragged and al.in_features == 64
    rng = np.random.default_rng(0)
    maps = {1: (rng.normal(size=20), rng.normal(size=(20, 6))), 0: (rng.normal(size=30), rng.normal(size=(30, 6)))}
    for row, (mean, weight) in maps.items():
        al.set_subject(row, mean.astype(np.float32), weight.astype(np.float32))
    with pytest.raises(ValueError, match="expected"):
        al.set_subject(0, np.zeros(65, np.float32), np.zeros((65, 6), np.float32))  # more voxels than the grid
    # a batch of both subjects, padded to V_max = 30 (subject 1 has 20 voxels, then zeros)
    x = torch.zeros(2, 30)
    x[0] = torch.from_numpy(rng.normal(size=30))
    x[1, :20] = torch.from_numpy(rng.normal(size=20))
    out = al(x, torch.tensor([0, 1]))
    for b, row, n in ((0, 0, 30), (1, 1, 20)):
        mean, weight = maps[row]
        want = (x[b, :n].double().numpy() - mean) @ weight
        np.testing.assert_allclose(out[b].reshape(-1).numpy(), want, rtol=1e-5, atol=1e-5)
    # the model runs on the aligned tokens (no patchifier) and keeps working when V_max changes
    idx = torch.full((2, 30), 64, dtype=torch.long)
    logits = model("v", x, torch.tensor([0, 1]), voxel_index=idx).logits
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    assert model("v", x[:, :25] * (x[:, :25] != 0), torch.tensor([0, 1]), voxel_index=idx[:, :25]).logits.shape == (2, 2)


def test_the_joint_alignments_shared_map_counts_in_the_memory_budget():
    """guidance-ridge-joint keeps one more grid-sized map (the pool's shared map): a budget that holds one subject's
    map holds the per-subject alignment and refuses the joint one, naming the shared map."""
    from foundation.core.api import DatasetInfo
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED

    vol = DatasetInfo(kind="volume", label_names=("a",), subjects=("s",), grid=(8, 8, 8))
    one_map = 8 ** 3 * 2 * 3 * 4  # grid × 2·alignment_dim (3: the guidance widths) × float32
    cfg = dict(dim=8, depth=1, heads=2, guidance_dims=[3, 3], alignment_memory_gib=1.5 * one_map / 2**30)
    model = CLIPMUSED(ModelConfig(**cfg, alignment="guidance-ridge"), {"v": vol}, ["v/s"])
    assert not model.alignments["v"].has_shared
    with pytest.raises(ValueError, match=r"1 subjects × 512 inputs \+ the shared map"):
        CLIPMUSED(ModelConfig(**cfg, alignment="guidance-ridge-joint"), {"v": vol}, ["v/s"])
    cfg["alignment_memory_gib"] = 2 * one_map / 2**30
    joint = CLIPMUSED(ModelConfig(**cfg, alignment="guidance-ridge-joint"), {"v": vol}, ["v/s"])
    assert joint.alignments["v"].shared_weight.shape == (8 ** 3, 6) and joint.optional_state_keys() == {
        "alignments.v.shared_weight", "alignments.v.shared_fit", "alignments.v.shared_fitted"}


def test_volume_maps_are_as_wide_as_the_most_in_mask_voxels_not_the_grid():
    """``alignment_rows``: a volume dataset's maps take (subjects × most in-mask voxels) rows, so a budget the grid
    would exceed holds them; a subject with more voxels widens them (fitted maps unchanged); the width survives
    config_dict; and a state dict saved with grid-wide maps (before the width was recorded) loads with the same
    outputs."""
    from foundation.core.api import DatasetInfo
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED

    vol = DatasetInfo(kind="volume", label_names=("a", "b"), subjects=("s1", "s2"), grid=(8, 8, 8))
    k2 = 2 * 3
    cfg = ModelConfig(dim=8, depth=1, heads=2, head_hidden=8, alignment="guidance-ridge-joint", guidance_dims=[3, 3],
                      alignment_memory_gib=(2 * 100 + 512) * k2 * 4 / 2**30)  # not 3 grid-wide maps
    with pytest.raises(ValueError, match="2 subjects × 512 inputs"):
        CLIPMUSED(cfg, {"v": vol}, ["v/s1", "v/s2"])
    torch.manual_seed(0)
    model = CLIPMUSED(cfg, {"v": vol}, ["v/s1", "v/s2"], alignment_rows={"v": 100})
    al = model.alignments["v"]
    assert tuple(al.weight.shape) == (2, 100, k2) and tuple(al.shared_weight.shape) == (512, k2)
    rng = np.random.default_rng(0)
    al.set_basis((np.zeros(3), np.eye(3)), (np.zeros(3), np.eye(3)))
    m1, w1 = rng.normal(size=90).astype(np.float32), rng.normal(size=(90, k2)).astype(np.float32)
    al.set_subject(0, m1, w1)
    m2, w2 = rng.normal(size=130).astype(np.float32), rng.normal(size=(130, k2)).astype(np.float32)
    al.set_subject(1, m2, w2)  # more voxels than the width: widened
    assert tuple(al.weight.shape) == (2, 130, k2)
    np.testing.assert_array_equal(al.weight[0, :90].numpy(), w1) and not al.weight[0, 90:].any()
    with pytest.raises(ValueError, match="V ≤ 512"):
        al.set_subject(1, np.zeros(513, np.float32), np.zeros((513, k2), np.float32))
    assert model.config_dict()["alignment_rows"] == {"v": 130}
    saved = model.config_dict()
    saved["model"]["alignment_memory_gib"] = 4.0  # the widened maps exceed the test's tiny budget
    copy = CLIPMUSED.from_config_dict(saved)
    copy.load_state_dict(model.state_dict())

    model.eval(), copy.eval()
    x = torch.randn(3, 130)
    idx = torch.tensor([0, 1, 1])
    vox = torch.arange(130).expand(3, -1).contiguous()
    out = model("v", x, idx, voxel_index=vox).logits
    torch.testing.assert_close(copy("v", x, idx, voxel_index=vox).logits, out)

    old = {k: v for k, v in model.state_dict().items()}  # as a grid-wide model saved it
    old["alignments.v.weight"] = torch.cat([old["alignments.v.weight"], torch.zeros(2, 512 - 130, k2)], dim=1)
    old["alignments.v.mean"] = torch.cat([old["alignments.v.mean"], torch.zeros(2, 512 - 130)], dim=1)
    spec = json.loads(json.dumps(saved))
    del spec["alignment_rows"]
    legacy = CLIPMUSED.from_config_dict(spec)
    assert legacy.alignments["v"].in_features == 512
    legacy.load_state_dict(old)
    legacy.eval()
    torch.testing.assert_close(legacy("v", x, idx, voxel_index=vox).logits, out)
    narrow = CLIPMUSED.from_config_dict(saved)  # a grid-wide state into a narrower model: widened
    narrow.load_state_dict(old)
    assert narrow.alignments["v"].in_features == 512
    narrow.eval()
    torch.testing.assert_close(narrow("v", x, idx, voxel_index=vox).logits, out)
