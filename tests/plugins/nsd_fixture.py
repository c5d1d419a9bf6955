"""Write a tiny NSD download in exactly the real layout (``docs/DATA_LAYOUTS.md``), with the truth.

File names, axis orders, dtypes and index bases are the real ones: int16 betas ×300 as
``(X, Y, Z, T)`` NIfTI and ``(T, Z, Y, X)`` HDF5, 1-based indices in ``nsd_expdesign.mat`` (stored as
MATLAB doubles), −1/0/label ROI codes, a ``Kastner2015.mgz.ctab``, the stimulus csv with its unnamed
first column (rows shuffled, so only the ``nsdId`` column can be trusted), COCO json files with
category ids that have gaps (and the categories list last, as COCO writes it), and a small
``imgBrick``.  Every size is a parameter.

The betas are built so that answers are known: with ``encode_ids`` the voxels of the V1 group carry
``ID_GAIN * (nsdId % 1000)`` plus a per-voxel, per-session offset and nothing else, so after per-session
z-scoring every V1 voxel equals the session z-score of the image id, and the first PCA score of the V1
token is ``sqrt(n_V1_voxels) * (that z-score - its training mean)``.  Every image has its own category
pattern, image ``n`` is filled with the value ``n % 256``, and its captions say ``image n``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Literal

import numpy as np

KASTNER_LABELS = ("V1v", "V1d", "V2v", "V2d", "V3v", "V3d", "hV4", "VO1", "VO2", "PHC1", "PHC2", "TO2", "TO1",
                  "LO2", "LO1", "V3b", "V3a", "IPS0", "IPS1", "IPS2", "IPS3", "IPS4", "IPS5", "SPL1", "FEF")
CATEGORIES = ((1, "person", "person"), (3, "car", "vehicle"), (18, "dog", "animal"), (44, "bottle", "kitchen"),
              (62, "chair", "furniture"), (90, "toothbrush", "indoor"))
ID_GAIN = 20
BETAS_DIR = "betas_fithrf_GLMdenoise_RR"
AFFINE = np.diag([1.8, 1.8, 1.8, 1.0])


def id_code(nsd_id: int) -> int:
    """What the V1 voxels encode about the image (``encode_ids``)."""
    return ID_GAIN * (int(nsd_id) % 1000)


@dataclasses.dataclass
class NSDFixture:
    """Paths and ground truth of a written fixture."""

    root: Path
    subjects: list[str]
    grid: tuple[int, int, int]
    formats: tuple[str, ...]
    session_trials: dict[str, list[int]]  # trials per session
    nsd_ids: dict[str, np.ndarray]  # per subject: 0-based 73k id of every trial
    shared: dict[str, np.ndarray]  # per subject: trial shows a shared image
    categories: list[tuple[int, str]]  # (COCO id, name) ordered by id
    labels: dict[int, np.ndarray]  # nsdId → multi-hot in category order
    captions: dict[int, list[str]]  # nsdId → captions
    roi_labels: dict[str, np.ndarray]  # per subject: (X, Y, Z) int labels (−1/0/1..25)
    n_images: int

    def betas_path(self, subject: str, session: int, fmt: str = "nifti") -> Path:
        return _betas_path(self.root, subject, session, fmt)

    def read_session(self, subject: str, session: int) -> np.ndarray:
        """The session as stored, ``(X, Y, Z, T)``."""
        if "nifti" in self.formats:
            import nibabel as nib

            return np.asarray(nib.load(str(self.betas_path(subject, session, "nifti"))).dataobj)
        import h5py

        with h5py.File(self.betas_path(subject, session, "hdf5"), "r") as f:
            return np.transpose(f["betas"][()])

    def write_session(self, subject: str, session: int, betas: np.ndarray) -> None:
        """Replace one session in every format written (``(X, Y, Z, T)``, int16 or float)."""
        for fmt in self.formats:
            _write_betas(self.betas_path(subject, session, fmt), betas, fmt)

    def group_voxels(self, subject: str, names: tuple[str, ...]) -> int:
        idx = [KASTNER_LABELS.index(n) + 1 for n in names]
        return int(np.isin(self.roi_labels[subject], idx).sum())


def _betas_path(root: Path, subject: str, session: int, fmt: str) -> Path:
    folder = root / "nsddata_betas" / "ppdata" / subject / "func1pt8mm" / BETAS_DIR
    return folder / f"betas_session{session:02d}.{'nii.gz' if fmt == 'nifti' else 'hdf5'}"


def _write_betas(path: Path, betas: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        import nibabel as nib

        img = nib.Nifti1Image(betas, AFFINE)
        img.header.set_data_dtype(betas.dtype)
        nib.save(img, str(path))
    else:
        import h5py

        with h5py.File(path, "w") as f:  # h5py sees the axes reversed: (T, Z, Y, X), chunked per voxel
            f.create_dataset("betas", data=np.ascontiguousarray(np.transpose(betas)), chunks=(betas.shape[3], 1, 1, 1))


def _roi_volume(rng: np.random.Generator, grid: tuple[int, int, int], brain: np.ndarray,
                layout: Literal["scatter", "blobs"]) -> np.ndarray:
    n_labels = len(KASTNER_LABELS)
    labels = np.full(grid, -1, dtype=np.int16)
    inside = np.flatnonzero(brain.reshape(-1))
    flat = labels.reshape(-1)
    if layout == "scatter":  # every label gets >= 2 voxels, the rest random (incl. 0 = unlabelled cortex)
        order = rng.permutation(inside)
        flat[order[:2 * n_labels]] = np.repeat(np.arange(1, n_labels + 1), 2)
        rest = order[2 * n_labels:]
        flat[rest] = rng.integers(-1, n_labels + 1, size=len(rest))
        return labels
    # blobs: contiguous labels around centres in the posterior (low y) part of the brain, cortex = 0 elsewhere
    xyz = np.stack(np.unravel_index(inside, grid), axis=1).astype(np.float32)
    flat[inside] = 0
    posterior = inside[xyz[:, 1] < np.quantile(xyz[:, 1], 0.45)]
    centres = np.stack(np.unravel_index(rng.choice(posterior, n_labels, replace=False), grid), axis=1)
    radii = rng.uniform(4.0, 6.5, size=n_labels)
    best = np.full(len(inside), np.inf, dtype=np.float32)
    for k in range(n_labels):
        d = np.sqrt(((xyz - centres[k]) ** 2).sum(axis=1)) / radii[k]
        win = (d < 1.0) & (d < best)
        best[win] = d[win]
        flat[inside[win]] = k + 1
    return labels


def write_nsd_fixture(
    root: str | Path,
    *,
    n_subjects: int = 2,
    sessions: tuple[int, ...] = (2, 1),
    trials_per_session: int = 12,
    grid: tuple[int, int, int] = (6, 7, 5),
    n_images: int | None = None,
    n_shared: int = 4,
    betas_format: Literal["nifti", "hdf5", "both"] = "both",
    roi_files: Literal["bilateral", "hemi"] = "bilateral",
    roi_layout: Literal["scatter", "blobs"] = "scatter",
    encode_ids: bool = True,
    image_size: int = 8,
    seed: int = 0,
) -> NSDFixture:
    """Write an NSD tree under ``root``; ``sessions[k]`` = sessions of subject ``k + 1``."""
    root = Path(root)
    if len(sessions) != n_subjects or n_subjects > 8:
        raise ValueError("give one session count per subject, at most 8 subjects")
    rng = np.random.default_rng(seed)
    subjects = [f"subj{k + 1:02d}" for k in range(n_subjects)]
    max_trials = max(sessions) * trials_per_session
    list_len = max(n_shared + 2, (2 * max_trials) // 3)  # the subject's "10k list" (shorter → repeats)
    n_unique = list_len - n_shared
    n_images = n_images or n_shared + n_subjects * n_unique + 3
    if n_images < n_shared + n_subjects * n_unique:
        raise ValueError(f"n_images={n_images} is too small for {n_subjects} subjects")

    # ---- design: shared ids, per-subject lists, one master ordering for everyone
    ids = rng.permutation(n_images)
    shared_ids = ids[:n_shared]
    subjectim = np.zeros((8, list_len), dtype=np.int64)
    for k in range(8):
        own = ids[n_shared + (k % n_subjects) * n_unique: n_shared + (k % n_subjects + 1) * n_unique]
        subjectim[k] = np.concatenate([shared_ids, rng.permutation(own)]) + 1
    counts = [s * trials_per_session for s in sessions]
    for _ in range(1000):
        order = np.concatenate([rng.permutation(list_len), rng.integers(0, list_len, max_trials)])[:max_trials] + 1
        order = rng.permutation(order)
        ok = all((order[:n] <= n_shared).any() and (order[:n] > n_shared).sum() > len(set(order[:n][order[:n] > n_shared]))
                 for n in counts)
        if ok:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not draw a master ordering with shared trials and repeats in every subject")
    design = root / "nsddata" / "experiments" / "nsd"
    design.mkdir(parents=True, exist_ok=True)
    import scipy.io

    scipy.io.savemat(design / "nsd_expdesign.mat", {
        "masterordering": order.astype(np.float64)[None, :],
        "subjectim": subjectim.astype(np.float64),
        "sharedix": (shared_ids + 1).astype(np.float64)[None, :],
        "stimpattern": np.zeros((2, 12, 75), dtype=np.float64),
    })
    nsd_ids = {s: subjectim[k, order[:counts[k]] - 1] - 1 for k, s in enumerate(subjects)}
    shared = {s: order[:counts[k]] <= n_shared for k, s in enumerate(subjects)}

    # ---- COCO: ids, splits, categories (distinct pattern per image), captions
    coco_ids = rng.choice(np.arange(1000, 600000), n_images, replace=False)
    splits = np.where(np.arange(n_images) % 4 == 3, "val2017", "train2017")
    cats = [(cid, name) for cid, name, _ in CATEGORIES]
    labels, captions = {}, {}
    n_patterns = 2 ** len(cats) - 1
    for n in range(n_images):
        bits = (n % n_patterns) + 1
        labels[n] = np.array([(bits >> i) & 1 for i in range(len(cats))], dtype=np.uint8)
        captions[n] = [f"image {n} caption {j}" for j in range(2 + n % 2)]
    ann_dir = root / "coco" / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split in ("train2017", "val2017"):
        members = [n for n in range(n_images) if splits[n] == split]
        images = [{"license": 1, "file_name": f"{coco_ids[n]:012d}.jpg", "height": 425, "width": 425,
                   "id": int(coco_ids[n])} for n in members]
        instances, caps = [], []
        for n in members:
            for i, on in enumerate(labels[n]):
                for copy in range(int(on) * (1 + (n + i) % 2)):  # some categories annotated twice
                    seg = ({"counts": [5, 10, 5], "size": [425, 425]} if copy else
                           [[float(x) for x in rng.uniform(0, 400, 8).round(2)]])
                    instances.append({"segmentation": seg, "area": 100.5, "iscrowd": int(bool(copy)),
                                      "image_id": int(coco_ids[n]), "bbox": [1.0, 2.0, 30.0, 40.0],
                                      "category_id": cats[i][0], "id": ann_id})
                    ann_id += 1
            for text in captions[n]:
                caps.append({"image_id": int(coco_ids[n]), "id": ann_id, "caption": text})
                ann_id += 1
        head = {"info": {"description": "tiny COCO 2017 stand-in"}, "licenses": [{"id": 1, "name": "x", "url": ""}],
                "images": images}
        categories = [{"supercategory": sup, "id": cid, "name": name} for cid, name, sup in CATEGORIES]
        (ann_dir / f"instances_{split}.json").write_text(
            json.dumps({**head, "annotations": instances, "categories": categories}))
        (ann_dir / f"captions_{split}.json").write_text(json.dumps({**head, "annotations": caps}))

    # ---- stimulus table (unnamed first column, rows shuffled)
    columns = (["", "cocoId", "cocoSplit", "cropBox", "loss", "nsdId", "flagged", "BOLD5000", "shared1000"]
               + [f"subject{k}" for k in range(1, 9)] + [f"subject{k}_rep{r}" for k in range(1, 9) for r in range(3)])
    shared_set = set(shared_ids.tolist())
    with open(design / "nsd_stim_info_merged.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for n in rng.permutation(n_images):
            seen = [int((subjectim[k] - 1 == n).any()) for k in range(8)]
            reps = []
            for k in range(8):
                trials = (np.flatnonzero(nsd_ids[subjects[k]] == n) + 1).tolist() if k < n_subjects else []
                reps += (trials + [0, 0, 0])[:3]
            w.writerow([n, coco_ids[n], splits[n], "(0, 0, 0.1, 0.1)", 0.0, n, False, False, n in shared_set]
                       + seen + reps)

    # ---- images
    import h5py

    stim_dir = root / "nsddata_stimuli" / "stimuli" / "nsd"
    stim_dir.mkdir(parents=True, exist_ok=True)
    with h5py.File(stim_dir / "nsd_stimuli.hdf5", "w") as f:
        brick = np.zeros((n_images, image_size, image_size, 3), dtype=np.uint8)
        brick[:] = (np.arange(n_images) % 256).astype(np.uint8)[:, None, None, None]
        f.create_dataset("imgBrick", data=brick, chunks=(1, image_size, image_size, 3))

    # ---- per subject: brain mask, ROI volumes, ctab, betas
    formats = ("nifti", "hdf5") if betas_format == "both" else (betas_format,)
    centre = (np.array(grid) - 1) / 2
    xyz = np.stack(np.meshgrid(*[np.arange(n) for n in grid], indexing="ij"), axis=-1)
    brain = (((xyz - centre) / (np.array(grid) / 2 + 0.3)) ** 2).sum(-1) <= 1.0
    roi_labels = {}
    import nibabel as nib

    for k, subject in enumerate(subjects):
        srng = np.random.default_rng([seed, k + 1])
        func = root / "nsddata" / "ppdata" / subject / "func1pt8mm"
        (func / "roi").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(brain.astype(np.int16), AFFINE), str(func / "brainmask.nii.gz"))
        rl = _roi_volume(srng, grid, brain, roi_layout)
        roi_labels[subject] = rl.astype(np.int32)
        if roi_files == "bilateral":
            nib.save(nib.Nifti1Image(rl.astype(np.float32), AFFINE), str(func / "roi" / "Kastner2015.nii.gz"))
        else:
            half = xyz[..., 0] < grid[0] // 2
            for hemi, side in (("lh", half), ("rh", ~half)):
                nib.save(nib.Nifti1Image(np.where(side, rl, -1).astype(np.float32), AFFINE),
                         str(func / "roi" / f"{hemi}.Kastner2015.nii.gz"))
        label_dir = root / "nsddata" / "freesurfer" / subject / "label"
        label_dir.mkdir(parents=True, exist_ok=True)
        (label_dir / "Kastner2015.mgz.ctab").write_text(
            "".join(f"{i} {name}\n" for i, name in enumerate(("Unknown",) + KASTNER_LABELS)))

        v1 = np.isin(rl, (1, 2)) if encode_ids else np.zeros(grid, dtype=bool)
        noise_vox = brain & ~v1
        gains = srng.uniform(0.5, 2.0, size=int(noise_vox.sum())).astype(np.float32)
        for s in range(sessions[k]):
            t0 = s * trials_per_session
            betas = np.zeros(grid + (trials_per_session,), dtype=np.int16, order="F")
            offsets = srng.integers(-2000, 2000, size=int(noise_vox.sum()))
            v1_offsets = srng.integers(-2000, 2000, size=int(v1.sum()))
            for j in range(trials_per_session):
                vol = betas[..., j]
                noise = srng.standard_normal(len(gains)).astype(np.float32) * gains * 300
                vol[noise_vox] = np.clip(np.rint(noise) + offsets, -32768, 32767).astype(np.int16)
                vol[v1] = (id_code(nsd_ids[subject][t0 + j]) + v1_offsets).astype(np.int16)
            for fmt in formats:
                _write_betas(_betas_path(root, subject, s + 1, fmt), betas, fmt)

    return NSDFixture(root=root, subjects=subjects, grid=tuple(grid), formats=formats,
                      session_trials={s: [trials_per_session] * sessions[k] for k, s in enumerate(subjects)},
                      nsd_ids=nsd_ids, shared=shared, categories=cats, labels=labels, captions=captions,
                      roi_labels=roi_labels, n_images=n_images)
