"""``guidance-ridge-joint``: every subject's volume map fitted together, sharing a map in the voxel grid."""

from __future__ import annotations

import numpy as np
import pytest

from foundation.model.alignment_joint import JOINT_ALPHAS, fit_guidance_ridge_joint


def _world(rng, *, grid=200, shared=1.0, noise=4.0):
    """Three subjects over a 200-voxel grid (masks that differ) whose voxels encode 4 targets through maps that are
    ``shared`` × one map in the grid + (1 − ``shared``) × their own, plus independent noise per voxel."""
    t_dim = 4
    common = rng.normal(size=(t_dim, grid))
    masks = [np.arange(grid), np.arange(5, grid), np.r_[0:100, 110:grid]]
    subjects = []
    for pos in masks:
        enc = shared * common[:, pos] + (1 - shared) * rng.normal(size=(t_dim, len(pos)))  # (T, V_s)

        def draw(m, pos=pos, enc=enc):
            t = rng.normal(size=(m, t_dim))
            return t @ enc + noise * rng.normal(size=(m, len(pos))), t

        subjects.append((pos, draw))
    return subjects


def test_share_zero_is_each_subjects_own_ridge():
    rng = np.random.default_rng(0)
    subjects = _world(rng)
    xs, ts, ps = [], [], []
    for pos, draw in subjects:
        x, t = draw(30)
        xs.append(x), ts.append(t), ps.append(pos)
    fits = fit_guidance_ridge_joint(xs, ps, ts, share=0.0, alphas=(0.3,))
    kernel_diag = np.mean(np.concatenate([(((x - x.mean(0)) / (x.std(0) + 1e-6)) ** 2).sum(1) for x in xs]))
    for x, t, (mean, weight, info) in zip(xs, ts, fits):
        z = (x - x.mean(0)) / (x.std(0) + 1e-6)
        alpha = 0.3 * kernel_diag
        primal = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (t - t.mean(0)))  # (V, T)
        np.testing.assert_allclose((x - mean) @ weight, z @ primal, rtol=1e-4, atol=1e-6)
        assert info["share"] == 0.0 and info["alpha"] == 0.3


def _test_correlations(subjects, n_train: int) -> dict[float, list[float]]:
    """Per subject, the correlation of its aligned new samples with their targets, fitted with share 0 and 1."""
    train = [draw(n_train) for _, draw in subjects]
    test = [draw(400) for _, draw in subjects]
    ps = [pos for pos, _ in subjects]
    scores = {}
    for share in (0.0, 1.0):
        fits = fit_guidance_ridge_joint([x for x, _ in train], ps, [t for _, t in train], share=share)
        scores[share] = [np.corrcoef(((x - m) @ w).ravel(), t.ravel())[0, 1] for (x, t), (m, w, _) in zip(test, fits)]
    return scores


def test_a_map_shared_in_the_grid_is_learnt_from_every_subject():
    """With maps common to subjects and few samples each, the joint fit predicts new samples better than each
    subject alone (share 0), on every subject; it also runs on masks that differ between subjects."""
    rng = np.random.default_rng(1)
    scores = _test_correlations(_world(rng), 15)
    assert all(j > s + 0.04 for j, s in zip(scores[1.0], scores[0.0])), scores


def test_maps_of_unrelated_subjects_do_not_hurt_much():
    """Subjects with nothing in common: the joint fit stays close to the per-subject one."""
    rng = np.random.default_rng(2)
    r = {share: np.mean(c) for share, c in _test_correlations(_world(rng, shared=0.0), 60).items()}
    assert r[1.0] > r[0.0] - 0.05, r


def test_bad_inputs_are_refused():
    x = np.zeros((5, 3))
    with pytest.raises(ValueError, match="one input, position and target"):
        fit_guidance_ridge_joint([x], [], [np.zeros((5, 2))])
    with pytest.raises(ValueError, match="do not match"):
        fit_guidance_ridge_joint([x], [np.arange(4)], [np.zeros((5, 2))])
    with pytest.raises(ValueError, match="strictly increasing"):
        fit_guidance_ridge_joint([x], [np.array([2, 1, 3])], [np.zeros((5, 2))])
    with pytest.raises(ValueError, match="at least 3"):
        fit_guidance_ridge_joint([x[:2]], [np.arange(3)], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="share"):
        fit_guidance_ridge_joint([x], [np.arange(3)], [np.zeros((5, 2))], share=-1)


def test_alpha_is_chosen_over_stimuli_held_out_in_every_subject_at_once():
    """Subjects that saw the same stimuli share their targets and what else the stimulus evokes: leave-one-out
    recognises a sample by its twin in the other subject, is optimistic and keeps alpha at the grid's floor;
    folds over stimuli do not."""
    rng = np.random.default_rng(3)
    pos = np.arange(300)
    t = rng.normal(size=(40, 4))  # 40 stimuli, both subjects saw all
    enc = 0.3 * rng.normal(size=(4, 300))
    evoked = 5.0 * rng.normal(size=(40, 300))  # each stimulus's response beyond its targets, alike in both subjects
    xs = [t @ enc + evoked + 6.0 * rng.normal(size=(40, 300)) for _ in range(2)]
    ids = [[f"stim{i:03d}" for i in range(40)]] * 2
    loo = fit_guidance_ridge_joint(xs, [pos, pos], [t, t], share=1.0)
    cv = fit_guidance_ridge_joint(xs, [pos, pos], [t, t], share=1.0, stimuli=ids)
    assert loo[0][2]["cv"] == "leave-one-out" and cv[0][2]["cv"] == "5-fold over stimuli"
    assert cv[0][2]["cv_mse"] > loo[0][2]["cv_mse"]  # the twins made leave-one-out optimistic
    assert loo[0][2]["alpha"] == min(JOINT_ALPHAS) < cv[0][2]["alpha"]
    with pytest.raises(ValueError, match="one id per training sample"):
        fit_guidance_ridge_joint(xs, [pos, pos], [t, t], stimuli=[ids[0][:5], ids[1]])
    with pytest.raises(ValueError, match="distinct stimuli"):
        fit_guidance_ridge_joint(xs, [pos, pos], [t, t], stimuli=[["a"] * 40, ["b"] * 40])


def test_a_pool_subject_refitted_against_the_shared_map_gets_its_joint_map():
    """The joint optimum is optimal in every block: fitting one pool subject's own part against the pool's shared
    map, with its own training data, returns the map the joint fit gave it."""
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared, fit_joint_and_shared

    rng = np.random.default_rng(3)
    train = [(pos, *draw(25)) for pos, draw in _world(rng)]
    fits, pool = fit_joint_and_shared([x for _, x, _ in train], [p for p, _, _ in train], [t for _, _, t in train],
                                      share=0.7, alphas=(0.1,))
    assert pool.share == 0.7 and pool.alpha == 0.1 and pool.weight.shape == (200, 4)
    for (pos, x, t), (mean, weight, _) in zip(train, fits):
        m, w, info = fit_guidance_ridge_to_shared(x, pos, t, pool, scales=(1.0,), alphas=None)
        np.testing.assert_allclose(m, mean, rtol=1e-6)
        np.testing.assert_allclose((x - m) @ w, (x - mean) @ weight, rtol=1e-3, atol=1e-4)
        assert info["shared_voxels"] == 1.0 and info["shared_scale"] == 1.0 and info["alpha"] == 0.1


def _newcomer_gains(shared_part: float, *, stimuli: bool) -> tuple[list[float], list[float]]:
    """Per world seed: (test correlation of the newcomer's map fitted against the pool's shared map − that of its own
    ridge map, the chosen scale ``c``); pool of 2 subjects × 60 samples, newcomer 12 samples."""
    from foundation.model.alignment import fit_guidance_ridge
    from foundation.model.alignment_joint import fit_guidance_ridge_to_shared, fit_joint_and_shared

    gains, scales = [], []
    for seed in range(3):
        rng = np.random.default_rng(10 + seed)
        subjects = _world(rng, shared=shared_part)
        pool = [(pos, *draw(60)) for pos, draw in subjects[:2]]
        _, shared = fit_joint_and_shared([x for _, x, _ in pool], [p for p, _, _ in pool], [t for _, _, t in pool])
        pos, draw = subjects[2]
        x, t = draw(12)
        xt, tt = draw(400)
        m, w, _ = fit_guidance_ridge(x, t)
        own = np.corrcoef(((xt - m) @ w).ravel(), tt.ravel())[0, 1]
        m, w, info = fit_guidance_ridge_to_shared(x, pos, t, shared, stimuli=list(range(12)) if stimuli else None)
        gains.append(np.corrcoef(((xt - m) @ w).ravel(), tt.ravel())[0, 1] - own)
        scales.append(info["shared_scale"])
        assert info["cv"] == ("5-fold over stimuli" if stimuli else "leave-one-out")
    return gains, scales


@pytest.mark.parametrize("stimuli", [False, True])
def test_a_newcomer_with_few_samples_learns_more_against_the_shared_map(stimuli):
    """A subject outside the pool with 12 training samples, maps mostly common to subjects: its map fitted against
    the pool's shared map predicts its new samples better than its own ridge map, on every world seed."""
    gains, scales = _newcomer_gains(0.8, stimuli=stimuli)
    assert min(gains) > 0.05 and min(scales) > 0, (gains, scales)


def test_a_newcomer_does_not_lean_on_a_shared_map_that_does_not_carry_over():
    """Subjects with nothing in common: the cross-validated scale keeps the newcomer near its own ridge map
    (a fixed c = 1 would pull it toward the pool's unrelated map)."""
    gains, scales = _newcomer_gains(0.0, stimuli=False)
    assert np.mean(gains) > -0.03 and min(gains) > -0.06, (gains, scales)


def test_a_newcomer_is_checked_against_the_shared_map():
    from foundation.model.alignment_joint import SharedMap, fit_guidance_ridge_to_shared

    pool = SharedMap(positions=np.arange(10), weight=np.zeros((10, 4), np.float32), lam=1.0, alpha=0.1, share=1.0)
    x, t = np.ones((5, 3)), np.zeros((5, 4))
    with pytest.raises(ValueError, match="columns"):
        fit_guidance_ridge_to_shared(x, np.arange(3), np.zeros((5, 2)), pool)
    with pytest.raises(ValueError, match="increasing"):
        fit_guidance_ridge_to_shared(x, np.array([2, 1, 3]), t, pool)
    with pytest.raises(ValueError, match="at least 3"):
        fit_guidance_ridge_to_shared(x[:2], np.arange(3), t[:2], pool)


def test_the_pool_takes_the_leading_subjects_whose_joint_fit_fits_in_memory():
    from foundation.model.alignment_joint import joint_fit_bytes, pool_size

    sizes, widths = [30, 30, 30], [200, 195, 190]
    assert joint_fit_bytes(sizes, widths) == 4 * 30 * (200 + 195 + 190) + 24 * 90 ** 2
    gib = [joint_fit_bytes(sizes[:n], widths[:n]) / 2**30 for n in (1, 2, 3)]
    assert pool_size(sizes, widths, None) == 3
    assert pool_size(sizes, widths, gib[2]) == 3
    assert pool_size(sizes, widths, gib[2] * 0.999) == 2
    assert pool_size(sizes, widths, gib[1]) == 2
    assert pool_size(sizes, widths, 1e-12) == 1  # at least one subject, however large
    big = [100, 5, 5]
    assert pool_size(big, widths, joint_fit_bytes(big[:1], widths[:1]) / 2**30) == 1  # a leading run, not packed
    with pytest.raises(ValueError, match="budget"):
        pool_size(sizes, widths, 0)
    # the sample bound (time, N³) binds where memory would not: many small subjects
    assert pool_size(sizes, widths, None, 60) == 2 and pool_size(sizes, widths, gib[2], 59) == 1
    assert pool_size(sizes, widths, gib[1], 90) == 2  # and the memory bound where the samples would not
    with pytest.raises(ValueError, match="sample budget"):
        pool_size(sizes, widths, None, 0)


def test_subjects_beyond_the_budget_are_fitted_against_the_pools_shared_map():
    """Within the budget ``fit_pool_and_rest`` is the joint fit; beyond it the leading subjects' joint fit gives the
    shared map and each later subject is exactly the newcomer fit against it (its samples do not shape the map),
    loaded only when its turn comes."""
    from foundation.model.alignment_joint import (fit_guidance_ridge_to_shared, fit_joint_and_shared,
                                                  fit_pool_and_rest, joint_fit_bytes)

    rng = np.random.default_rng(3)
    data = [(pos, *draw(30)) for pos, draw in _world(rng)]
    xs, ps, ts = [x for _, x, _ in data], [p for p, _, _ in data], [t for _, _, t in data]
    ids = [[f"s{i % 10}" for i in range(30)] for _ in data]
    loads = []

    def load(i):
        loads.append(i)
        return xs[i].astype(np.float32), ts[i], ids[i]  # a copy: the pool standardises it in place

    everyone, shared_all = fit_joint_and_shared(xs, ps, ts, stimuli=ids)
    pooled, shared_within, fits = fit_pool_and_rest(load, ps, [30, 30, 30], budget_gib=None)
    assert pooled == 3 and loads == [0, 1, 2]
    np.testing.assert_allclose(shared_within.weight, shared_all.weight, rtol=1e-4, atol=1e-5)  # float32 inputs
    for (i, m, w, info), (m0, w0, _) in zip(fits, everyone):
        np.testing.assert_allclose(w, w0, rtol=1e-4, atol=1e-5)
        assert info["pool"] == "joint"

    loads.clear()
    two = joint_fit_bytes([30, 30], [len(p) for p in ps[:2]]) / 2**30
    pooled, shared, fits = fit_pool_and_rest(load, ps, [30, 30, 30], budget_gib=two)
    assert pooled == 2 and loads == [0, 1]  # the third is not loaded before its turn
    pool, shared_two = fit_joint_and_shared(xs[:2], ps[:2], ts[:2], stimuli=ids[:2])
    np.testing.assert_allclose(shared.weight, shared_two.weight, rtol=1e-4, atol=1e-5)
    split = list(fits)
    assert loads == [0, 1, 2] and [i for i, *_ in split] == [0, 1, 2]
    for (_, _, w, info), (_, w0, _) in zip(split[:2], pool):
        np.testing.assert_allclose(w, w0, rtol=1e-4, atol=1e-5)
        assert info["pool"] == "joint"
    _, w_new, info_new = fit_guidance_ridge_to_shared(xs[2], ps[2], ts[2], shared_two, stimuli=ids[2])
    np.testing.assert_allclose(split[2][2], w_new, rtol=1e-4, atol=1e-5)
    assert split[2][3]["pool"] == "against the shared map" and split[2][3]["shared_scale"] == info_new["shared_scale"]
    assert not np.allclose(split[2][2], everyone[2][1], rtol=1e-2, atol=1e-3)  # not the joint fit of all three


def test_the_chunked_float64_products_equal_the_direct_ones():
    """The joint fit never copies a whole (n, V) input to float64: its kernel, moments and products run over
    blocks of voxels; on inputs wider than one block they equal the direct float64 computations."""
    from foundation.model import alignment_joint as aj

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 3 * aj._CHUNK + 5)).astype(np.float32), rng.normal(size=(5, 2 * aj._CHUNK)).astype(np.float32)
    ia = np.sort(rng.choice(a.shape[1], aj._CHUNK + 17, replace=False))
    ib = np.sort(rng.choice(b.shape[1], aj._CHUNK + 17, replace=False))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    np.testing.assert_allclose(aj._gram(a, a), a64 @ a64.T, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(aj._gram(a, b, ia, ib), a64[:, ia] @ b64[:, ib].T, rtol=1e-12, atol=1e-9)
    w, d = rng.normal(size=(a.shape[1], 3)), rng.normal(size=(7, 3))
    np.testing.assert_allclose(aj._product(a, w), a64 @ w, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(aj._transposed_product(a, d), a64.T @ d, rtol=1e-12, atol=1e-12)
    mean, std = aj._checked_moments(a, np.arange(a.shape[1]), d)
    np.testing.assert_allclose(mean, a64.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(std, a64.std(0) + 1e-6, rtol=1e-12)
    z = a.copy()
    assert aj._standardise(z, mean, std, overwrite=True) is z  # in place
    kept = a.copy()
    assert aj._standardise(kept, mean, std, overwrite=False) is not kept and np.array_equal(kept, a)


def test_leave_one_out_errors_match_refitting_without_each_sample():
    """The closed-form leave-one-out errors equal refitting the ridge with one unpenalised intercept per subject
    without each sample in turn (one subject, as a newcomer's fit; two, as the joint fit's), at every penalty —
    the penalty's floor included, where an intercept left out of the hat matrix made the errors vanish."""
    from foundation.model.alignment_joint import _loo_column_errors

    rng = np.random.default_rng(5)
    for sizes in ([12], [9, 7]):
        n, features = sum(sizes), 30  # fewer samples than features: the kernel's only null directions are 1_s
        groups = np.repeat(np.arange(len(sizes)), sizes)
        phi = rng.normal(size=(n, features))
        y = phi[:, :3] @ rng.normal(size=(3, 2)) + rng.normal(size=(n, 2)) + 3.0 * groups[:, None]
        for g in range(len(sizes)):  # centred per subject, as the fits do
            phi[groups == g] -= phi[groups == g].mean(0)
            y[groups == g] -= y[groups == g].mean(0)
        lam, u = np.linalg.eigh(phi @ phi.T)
        lams = [1e-3, 0.1, 10.0, 1e3]
        closed = _loo_column_errors(np.clip(lam, 0.0, None), u, y, lams, sizes=sizes)
        onehot = (groups[:, None] == np.arange(len(sizes))).astype(float)
        design = np.hstack([phi, onehot])
        for j, penalty in enumerate(lams):
            ridge = np.diag([penalty] * features + [0.0] * len(sizes))  # intercepts unpenalised
            errors = np.empty_like(y)
            for i in range(n):
                rest = np.arange(n) != i
                coef = np.linalg.solve(design[rest].T @ design[rest] + ridge, design[rest].T @ y[rest])
                errors[i] = (y[i] - design[i] @ coef) ** 2
            np.testing.assert_allclose(closed[j], errors.mean(0), rtol=1e-6)
    with pytest.raises(ValueError, match="add up"):
        _loo_column_errors(np.clip(lam, 0.0, None), u, y, lams, sizes=[3])
