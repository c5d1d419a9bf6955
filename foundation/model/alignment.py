"""Per-subject input alignment: fixed linear maps, fitted in closed form, into a space shared by subjects.

Why (docs/RESULTS.md, "Why tokens cannot carry a subject"): a subject's inputs are in that subject's
own coordinates (per-subject PCA bases with arbitrary sign, order and rotation; ROIs that sit at
other places on the low→high hierarchy).  One shared linear embedding cannot undo a per-subject
linear code, and a subject token only *adds* to the sequence, so it cannot apply a per-subject linear
map to the inputs either.  An alignment does exactly that, before the shared model sees the data:

    a_s(x) = (flatten(x) − μ_s) W_s   →  (levels, dim) tokens in the guidance space     (B, 2, k)

``W_s`` ``(F, 2k)`` is a ridge regression (``alpha`` by generalised cross-validation on the
subject's own training samples; no validation or test data) from the subject's flattened inputs
``(F,)`` onto the guidance features of the stimuli it saw: the low-level and the high-level features,
each projected onto ``k`` principal axes of the guidance features of the dataset's training stimuli
(a stimulus-side basis, shared by all subjects, fitted once at pre-training and kept for new
subjects) and scaled to unit mean variance.  Every subject's aligned tokens thus share one
coordinate system, whatever its input code was.

The maps are *buffers*, not parameters: they are fitted, never trained, and they travel in the model's
state dict (``model.safetensors``, no pickle), so ``train``, ``finetune`` and ``predict`` apply them
through the same :meth:`SubjectAlignment.forward`.  The learned per-subject parameters stay the token
table's ``2 · dim``.  New alignment methods register a fitter in :data:`FITTERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .alignment_joint import SharedMap

__all__ = ["ALIGNMENTS", "FITTED_ALIGNMENTS", "FITTERS", "JOINT_FITTERS", "PCA_RANKS", "RIDGE_ALPHAS",
           "SubjectAlignment", "fit_guidance_encoding", "fit_guidance_pca_ridge", "fit_guidance_ridge",
           "guidance_basis", "guidance_bases", "guidance_targets"]

#: ridge ``alpha`` grid for generalised cross-validation (features standardised per subject)
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-1, 5, 13))


def _standardised(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(standardised x (n, F), mean (F,), std (F,))`` of one subject's training inputs, in float64; every
    fitter folds ``mean`` and ``std`` back into its map."""
    if len(x) < 3:
        raise ValueError(f"an alignment needs at least 3 training samples, got {len(x)}")
    x = x.astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, mean, std


def fit_guidance_ridge(x: np.ndarray, targets: np.ndarray, *,
                       alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Ridge from one subject's training inputs to its stimuli's guidance targets.

    Args:
        x: ``(n, F)`` the subject's flattened training inputs.
        targets: ``(n, T)`` the shared-space targets of the same samples.

    Returns:
        ``(mean (F,), weight (F, T), info)`` such that ``(x − mean) @ weight`` predicts ``targets``
        (the per-feature standardisation is folded into ``weight``); ``info`` holds the chosen alpha.
    """
    from sklearn.linear_model import RidgeCV

    xs, mean, std = _standardised(x)
    model = RidgeCV(alphas=list(alphas), fit_intercept=True).fit(xs, targets.astype(np.float64))
    weight = model.coef_.T / std[:, None]  # (F, T)
    # RidgeCV's intercept is the targets' training mean (centred inputs); the shared space is centred too
    return mean.astype(np.float32), weight.astype(np.float32), {"alpha": float(model.alpha_)}


def fit_guidance_encoding(x: np.ndarray, targets: np.ndarray, *,
                          alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Decoding by inverting an encoding model: from the shared space to the subject's inputs, then back.

    The forward ("encoding") direction is fitted instead of the backward one: a ridge regression from
    the ``T`` shared-space targets to each of the subject's ``F`` standardised inputs (``alpha`` by
    generalised cross-validation), with the residual variance of each input as its noise level.
    The decoder is then the posterior mean of the targets given an input under that linear-Gaussian
    model with a unit-variance prior on the targets (the guidance basis is scaled to unit mean variance):

        g = (B Σ⁻¹ Bᵀ + I)⁻¹ B Σ⁻¹ (x − μ)          B (T, F) encoding weights, Σ = diag(noise variances)

    Why: with few samples (a new subject) the encoding direction has ``T`` predictors per input instead of
    ``F`` per target, and the noise model weights each input by how reliably the shared space predicts
    it (the classic encoding-model decoders of Naselaris et al. 2011).  Independent noise across inputs
    is an assumption (real fMRI noise is correlated across voxels/components); on inputs already
    decorrelated per subject (PCA components) it is the usual approximation.

    Args / returns: as :func:`fit_guidance_ridge` (``info`` holds the encoding's alpha).
    """
    from sklearn.linear_model import RidgeCV

    xs, mean, std = _standardised(x)
    t = targets.astype(np.float64)
    tc = t - t.mean(0)
    model = RidgeCV(alphas=list(alphas), fit_intercept=False).fit(tc, xs)
    enc = model.coef_.reshape(xs.shape[1], -1).T  # (T, F): scikit-learn drops the axis of a one-column target
    noise = ((xs - tc @ enc) ** 2).sum(0) / max(1, len(x) - 1) + 1e-6  # (F,)
    scaled = enc / noise  # B Σ⁻¹  (T, F)
    weight = np.linalg.solve(scaled @ enc.T + np.eye(enc.shape[0]), scaled).T  # (F, T)
    return mean.astype(np.float32), (weight / std[:, None]).astype(np.float32), {"alpha": float(model.alpha_)}


#: the ranks :func:`fit_guidance_pca_ridge` tries (those up to the training samples − 1), besides full rank
PCA_RANKS = (4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def fit_guidance_pca_ridge(x: np.ndarray, targets: np.ndarray, *, alphas: Sequence[float] = RIDGE_ALPHAS,
                           ranks: Sequence[int] = PCA_RANKS) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Ridge onto the guidance targets through the subject's own leading principal components (reduced rank).

    The subject's standardised training inputs are decomposed once (``xs = U S Vᵀ``, through the ``(n, n)``
    Gram matrix ``xs xsᵀ``, so the memory beyond ``xs`` is ``n²``: a subject's samples, not its voxels); for
    each rank ``k`` of ``ranks`` (and full rank, which is :func:`fit_guidance_ridge`'s fit) a ridge regression
    from the first ``k`` component scores to the targets is fitted with its alpha by efficient leave-one-out,
    and the ``(k, alpha)`` with the lowest leave-one-out error wins. The map stays one ``(F, T)`` matrix (``V_k``
    times the ridge weights), so the model applies it exactly as it applies the others.

    Why: a subject's voxels are a low-rank image of what drives them plus noise in every voxel; a ridge over all
    voxels shrinks the weak directions but still fits them, while cutting them off removes their noise. Measured
    (docs/RESULTS.md §4n): better on the volume world (12 areas in 848 voxels per subject), much worse on planted
    HCP-layout data (a weak response spread over ~60 000 voxels), so not a default. The components are
    computed with every training sample, so the leave-one-out error is slightly optimistic for every rank alike.

    Args / returns: as :func:`fit_guidance_ridge`; ``info`` holds the chosen ``alpha`` and ``rank`` (0: full).
    """
    from sklearn.linear_model import RidgeCV

    xs, mean, std = _standardised(x)
    t = targets.astype(np.float64)
    # the components from the (n, n) Gram matrix: no (n, F) factor beside xs (HCP: F ~ 0.45 M voxels)
    eigval, u = np.linalg.eigh(xs @ xs.T)  # ascending: reversed below, largest first
    sv = np.sqrt(np.clip(eigval[::-1], 0.0, None))
    keep = sv > 1e-6 * sv[0]  # centring leaves one null direction (more if F < n); eigh's noise is ~1e-8 here
    if not keep.any():  # inputs constant over the training samples: nothing to reduce, the ridge's (zero) map
        mean, weight, info = fit_guidance_ridge(x, targets, alphas=alphas)
        return mean, weight, {**info, "rank": 0.0}
    u, sv = u[:, ::-1][:, keep], sv[keep]  # (n, r), (r,): scores u · sv
    full = len(sv)
    best: tuple[float, int, float, np.ndarray] | None = None
    for k in [r for r in ranks if r < full] + [full]:
        model = RidgeCV(alphas=list(alphas), fit_intercept=True).fit(u[:, :k] * sv[:k], t)
        if best is None or model.best_score_ > best[0]:
            best = (float(model.best_score_), k, float(model.alpha_), model.coef_.T)  # coef (k, T)
    _, k, alpha, coef = best
    weight = xs.T @ (u[:, :k] @ (coef / sv[:k, None]))  # V_k = xsᵀ U_k S_k⁻¹ → (F, T)
    return (mean.astype(np.float32), (weight / std[:, None]).astype(np.float32),
            {"alpha": alpha, "rank": float(0 if k == full else k)})


#: alignment name -> fitter ``(x (n, F), targets (n, T)) -> (mean (F,), weight (F, T), info)``
FITTERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, dict[str, float]]]] = {
    "guidance-ridge": fit_guidance_ridge,
    "guidance-encoding": fit_guidance_encoding,
    "guidance-pca-ridge": fit_guidance_pca_ridge,
}
#: alignments fitted over all subjects of a volume dataset together (``foundation.model.alignment_joint``)
JOINT_FITTERS = ("guidance-ridge-joint",)
#: every fitted alignment (what ``--alignment`` of the linear workflow takes)
FITTED_ALIGNMENTS = (*FITTERS, *JOINT_FITTERS)
ALIGNMENTS = ("none", *FITTED_ALIGNMENTS)


def guidance_basis(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` principal axes of one guidance level over the training stimuli.

    Args:
        features: ``(N, D)`` guidance features, one row per distinct training stimulus.

    Returns:
        ``(centre (D,), projection (D, k))``: ``(f − centre) @ projection`` has unit mean variance
        over its ``k`` components.
    """
    if len(features) < 2:
        raise ValueError(f"a guidance basis needs at least 2 stimuli, got {len(features)}")
    f = features.astype(np.float64)
    centre = f.mean(0)
    _, s, vt = np.linalg.svd(f - centre, full_matrices=False)
    k = min(k, vt.shape[0])
    var = (s[:k] ** 2).mean() / (len(f) - 1)
    return centre.astype(np.float32), (vt[:k].T / np.sqrt(var + 1e-12)).astype(np.float32)


def guidance_bases(stimuli: Mapping[Hashable, tuple[np.ndarray, np.ndarray]], k: int) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                                       tuple[np.ndarray, np.ndarray]]:
    """The low- and the high-level :func:`guidance_basis` over distinct training stimuli.

    Args:
        stimuli: one entry per distinct stimulus (any key: a stimulus id, ``(dataset, id)``) -> its
            ``(low (D_low,), high (D_high,))`` guidance features.
        k: components per level.
    """
    low = np.stack([v[0] for v in stimuli.values()])
    high = np.stack([v[1] for v in stimuli.values()])
    return guidance_basis(low, k), guidance_basis(high, k)


def guidance_targets(low: np.ndarray, high: np.ndarray,
                     bases: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Guidance features ``(n, D_low)``, ``(n, D_high)`` -> shared-space targets ``(n, k_low + k_high)``
    in the ``(centre, projection)`` bases of the two levels."""
    parts = [(f - centre) @ proj for f, (centre, proj) in zip((low, high), bases)]
    return np.concatenate(parts, 1).astype(np.float32)


class SubjectAlignment(nn.Module):
    """One dataset's per-subject alignments: ``(B, *input) -> (B, 2, dim)`` tokens in the guidance space.

    Rows are the model's global subject rows (token-table order); rows of subjects of other datasets
    stay unfitted.  Buffers: ``weight`` ``(S, F, 2·dim)``, ``mean`` ``(S, F)``, ``fitted`` ``(S,)``;
    the shared guidance basis ``centre_low`` ``(D_low,)``, ``proj_low`` ``(D_low, dim)`` and the
    same for ``high``.

    ``ragged=True`` (volume datasets): a sample is the subject's ``V_s`` in-mask voxels, zero-padded to
    the batch's width ``V_max ≤ F``; a subject's map covers its first ``V_s`` rows and is zero beyond, so the
    padding contributes nothing.  ``F`` is the most in-mask voxels of the subjects known when the model was
    built (the trainer passes it; a quarter of the grid or less for a brain in a template grid), widened when
    a subject with more is fitted (:meth:`set_subject`); models saved when ``F`` was the grid's size load as
    they were (:meth:`_load_from_state_dict` takes the saved width).

    ``shared=True`` (a joint alignment of a volume dataset, ``model.alignment: guidance-ridge-joint``) also
    keeps the pool's shared map over the grid, what subjects added later are fitted against: buffers
    ``shared_weight`` ``(G, 2·dim)`` (``G`` = ``grid_features``, flat grid positions), ``shared_fit`` ``(3,)`` =
    (absolute ridge penalty, relative alpha, share) and ``shared_fitted``.  A checkpoint written before these
    buffers existed loads with ``shared_fitted`` false.
    """

    levels = 2
    #: buffers a checkpoint written before they existed may lack (the pool's shared map, see above)
    OPTIONAL_BUFFERS = ("shared_weight", "shared_fit", "shared_fitted")

    def __init__(self, n_subjects: int, in_features: int, *, guidance_dims: Sequence[int], dim: int,
                 ragged: bool = False, shared: bool = False, grid_features: int | None = None) -> None:
        super().__init__()
        grid_features = in_features if grid_features is None else grid_features
        if (in_features <= 0 or dim <= 0 or len(guidance_dims) != 2 or min(guidance_dims) <= 0
                or grid_features < in_features or (grid_features != in_features and not ragged)):
            raise ValueError(f"bad alignment sizes: in_features={in_features}, grid_features={grid_features}, "
                             f"dim={dim}, guidance_dims={list(guidance_dims)}")
        self.in_features, self.dim, self.ragged = in_features, dim, ragged
        #: ragged: the grid's size, the most in-mask voxels a subject can have (and the shared map's rows)
        self.grid_features = grid_features
        self.register_buffer("weight", torch.zeros(n_subjects, in_features, self.levels * dim))
        self.register_buffer("mean", torch.zeros(n_subjects, in_features))
        self.register_buffer("fitted", torch.zeros(n_subjects, dtype=torch.bool))
        for level, d in zip(("low", "high"), guidance_dims):
            self.register_buffer(f"centre_{level}", torch.zeros(d))
            self.register_buffer(f"proj_{level}", torch.zeros(d, dim))
        self.register_buffer("basis_fitted", torch.zeros((), dtype=torch.bool))
        self.has_shared = shared
        if shared:
            self.register_buffer("shared_weight", torch.zeros(grid_features, self.levels * dim))
            self.register_buffer("shared_fit", torch.zeros(3))  # float32: MPS has no float64
            self.register_buffer("shared_fitted", torch.zeros((), dtype=torch.bool))

    def __len__(self) -> int:
        return self.fitted.shape[0]

    @torch.no_grad()
    def grow(self, n: int) -> None:
        """Append ``n`` unfitted rows (new subjects); existing rows are kept bit for bit."""
        f = self.weight
        self.weight = torch.cat([f, f.new_zeros(n, *f.shape[1:])])
        self.mean = torch.cat([self.mean, self.mean.new_zeros(n, self.in_features)])
        self.fitted = torch.cat([self.fitted, self.fitted.new_zeros(n)])

    @torch.no_grad()
    def widen(self, n: int) -> None:
        """Ragged maps: make room for subjects of up to ``n`` in-mask voxels (zero rows appended; every fitted
        map unchanged, since rows beyond a subject's voxels are zero)."""
        if not self.ragged or n > self.grid_features:
            raise ValueError(f"cannot widen the alignment to {n} inputs (ragged={self.ragged}, grid of "
                             f"{self.grid_features})")
        if n <= self.in_features:
            return
        extra = n - self.in_features
        self.weight = torch.cat([self.weight, self.weight.new_zeros(len(self), extra, self.weight.shape[2])], dim=1)
        self.mean = torch.cat([self.mean, self.mean.new_zeros(len(self), extra)], dim=1)
        self.in_features = n

    @torch.no_grad()
    def set_basis(self, low: tuple[np.ndarray, np.ndarray], high: tuple[np.ndarray, np.ndarray]) -> None:
        """Install the shared guidance basis (:func:`guidance_basis` of each level)."""
        for level, (centre, proj) in (("low", low), ("high", high)):
            own = getattr(self, f"proj_{level}")
            if proj.shape[0] != own.shape[0] or proj.shape[1] > own.shape[1]:
                raise ValueError(f"{level} guidance basis {proj.shape} does not fit the model's {tuple(own.shape)}")
            own.zero_()
            own[:, : proj.shape[1]] = torch.from_numpy(proj)
            getattr(self, f"centre_{level}").copy_(torch.from_numpy(centre))
        self.basis_fitted.fill_(True)

    def targets(self, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """Guidance features ``(n, D_low)``, ``(n, D_high)`` -> shared-space targets ``(n, 2·dim)``."""
        if not bool(self.basis_fitted):
            raise ValueError("the alignment's guidance basis is not fitted yet")
        bases = [(getattr(self, f"centre_{lv}").numpy(), getattr(self, f"proj_{lv}").numpy()) for lv in ("low", "high")]
        return guidance_targets(low, high, bases)

    @torch.no_grad()
    def set_subject(self, row: int, mean: np.ndarray, weight: np.ndarray) -> None:
        """Install one subject's fitted map (``mean`` ``(F,)``, ``weight`` ``(F, 2·dim)``; ragged: ``(V_s,)``,
        ``(V_s, 2·dim)`` with ``V_s`` at most the grid's size, zero-padded; the maps are widened when ``V_s > F``)."""
        n = weight.shape[0] if self.ragged and weight.ndim == 2 else self.in_features
        limit = self.grid_features if self.ragged else self.in_features
        if (weight.shape != (n, self.weight.shape[2]) or mean.shape != (n,) or n > limit):
            expected = "(V ≤ " if self.ragged else "("
            raise ValueError(f"alignment of row {row}: weight {weight.shape} / mean {mean.shape}, expected "
                             f"{expected}{limit}, {self.weight.shape[2]}) / {expected}{limit},)")
        if n > self.in_features:
            self.widen(n)
        self.weight[row] = 0.0
        self.mean[row] = 0.0
        self.weight[row, :n] = torch.from_numpy(weight).to(self.weight)
        self.mean[row, :n] = torch.from_numpy(mean).to(self.mean)
        self.fitted[row] = True

    @torch.no_grad()
    def set_shared(self, shared: SharedMap) -> None:
        """Install the pool's shared map (:func:`~foundation.model.alignment_joint.fit_joint_and_shared`)."""
        if not self.has_shared:
            raise ValueError("this alignment keeps no shared map (built with shared=False)")
        if shared.weight.shape[1] != self.shared_weight.shape[1] or (
                len(shared.positions) and int(shared.positions.max()) >= self.grid_features):
            raise ValueError(f"shared map {shared.weight.shape} at positions up to {int(shared.positions.max())} "
                             f"does not fit the grid of {self.grid_features} × {self.shared_weight.shape[1]}")
        self.shared_weight.zero_()
        self.shared_weight[torch.from_numpy(np.asarray(shared.positions, dtype=np.int64))] = torch.from_numpy(
            np.asarray(shared.weight)).to(self.shared_weight)
        self.shared_fit.copy_(torch.tensor([shared.lam, shared.alpha, shared.share]))
        self.shared_fitted.fill_(True)

    def shared_map(self) -> SharedMap | None:
        """The installed shared map over the grid's positions, or ``None`` (none kept, or none fitted yet)."""
        if not self.has_shared or not bool(self.shared_fitted):
            return None
        lam, alpha, share = (float(v) for v in self.shared_fit.cpu())
        return SharedMap(positions=np.arange(self.grid_features), weight=self.shared_weight.cpu().numpy(), lam=lam,
                         alpha=alpha, share=share)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        saved = state_dict.get(prefix + "weight")
        if self.ragged and saved is not None and saved.dim() == 3 and saved.shape[1] != self.in_features \
                and self.in_features <= saved.shape[1] <= self.grid_features:
            # saved with wider maps (before the width was the subjects' most in-mask voxels: the grid's size)
            self.widen(int(saved.shape[1]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if self.has_shared and prefix + "shared_fitted" in missing_keys:  # saved before the shared map was kept
            for name in self.OPTIONAL_BUFFERS:
                if prefix + name in missing_keys:
                    missing_keys.remove(prefix + name)
            self.shared_fitted.fill_(False)

    def unfitted(self, subject_idx: Tensor) -> list[int]:
        """The rows of ``subject_idx`` ``(B,)`` that have no alignment yet."""
        ok = self.fitted[subject_idx.to(self.fitted.device)]
        return sorted({int(i) for i in subject_idx[~ok.cpu()].tolist()}) if not bool(ok.all()) else []

    def forward(self, x: Tensor, subject_idx: Tensor) -> Tensor:
        """``x`` ``(B, *input)`` of the subjects ``subject_idx`` ``(B,)`` -> ``(B, 2, dim)``."""
        idx = subject_idx.to(self.weight.device)
        flat = x.reshape(x.shape[0], -1).to(self.weight.dtype)  # (B, F) or, ragged, (B, V_max)
        if self.ragged and self.in_features < flat.shape[1] <= self.grid_features:
            # padded wider than every fitted subject's voxels (the shards pad to their widest subject, which
            # this model may not hold): the columns beyond the maps' width are padding for every sample here
            flat = flat[:, : self.in_features]
        width = flat.shape[1]
        if width != self.in_features and not (self.ragged and width <= self.in_features):
            raise ValueError(f"alignment expects {'at most ' if self.ragged else ''}{self.in_features} input values "
                             f"per sample, got {width}")
        # one matmul per subject in the batch: gathering a (W, 2·dim) map per *sample* for a bmm copied
        # B × W × 2·dim floats (2 GB at batch 64 of 129 k-voxel volumes) and cost 30× the matmuls
        out = flat.new_empty(flat.shape[0], self.weight.shape[2])  # (B, 2·dim)
        for row in idx.unique().tolist():
            rows = (idx == row).nonzero().squeeze(1)
            out[rows] = (flat[rows] - self.mean[row, :width]) @ self.weight[row, :width]
        return out.view(x.shape[0], self.levels, self.dim)
