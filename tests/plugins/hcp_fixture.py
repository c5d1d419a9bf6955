"""Write a tiny HCP 7T movie-watching tree in exactly the download layout (tests and benchmarks).

The layout follows ``../shared/docs/DATA_LAYOUTS.md`` (HCP) and is written here independently of the
plugin's own path code, so a wrong path in the plugin fails the tests::

    <root>/<SUBJ>/MNINonLinear/Results/tfMRI_MOVIE<m>_7T_<PE>/tfMRI_MOVIE<m>_7T_<PE>_hp2000_clean.nii.gz
        float32 (X, Y, Z, T), the MNI 1.6 mm affine with sform/qform code 4, TR = 1 s
    <root>/7T_movie_resources/WordNetFeatures.hdf5
        MOVIE1_CC1, MOVIE2_HO1, MOVIE3_CC2, MOVIE4_HO2: (T, C) 0/1; synsets: C names as bytes
    <root>/clip_segments.json          the segments as `python -m foundation_hcp.segments convert` writes them
    <root>/clip_times_24.npy           optional: the same segments as Khosla et al.'s pickled dict

What is planted, so tests know the right answers:

* volumes: zero outside an ellipsoidal "brain"; inside, ``1000 + 50·subject + noise``; the voxel
  :data:`MARKER` holds ``500 + t`` at volume ``t`` (min–max normalised: ``t / (T - 1)``), the voxel
  :data:`CONSTANT` is ``123`` at every t (in the ``nonzero`` mask, normalised to 0), the voxel
  :data:`ZERO` is 0 at every t (outside every derived mask);
* WordNet: category ``k < 6`` is present at second ``s`` iff ``(s + k)`` is even (frequency ≈ 0.5);
  category 6 only in movie 4 (frequency 0 over training seconds); category 7 only at second 5 of
  movies 1–3 (3 of the 48 training seconds: 0.0625); the others never;
* segments per run of ``T`` seconds: ``[48, 240)`` → seconds 2..9, ``[300, 480)`` → 12..19 (start
  12.5 s: floor), and the "repeated" clip ``[24(T-8), 24(T-1))`` → seconds T-8..T-2, of which only
  T-8..T-5 have a volume 4 s later.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import numpy as np

#: movie → (phase encoding, WordNet / movie-file code); written out here, not imported from the plugin
RUNS = {1: ("AP", "MOVIE1_CC1"), 2: ("PA", "MOVIE2_HO1"), 3: ("PA", "MOVIE3_CC2"), 4: ("AP", "MOVIE4_HO2")}
AFFINE = np.array([[-1.6, 0, 0, 90], [0, 1.6, 0, -126], [0, 0, 1.6, -72], [0, 0, 0, 1]], dtype=np.float64)
SYNSETS = ("plant.n.02", "person.n.01", "building.n.01", "car.n.01", "dog.n.01", "tree.n.01", "water.n.01",
           "face.n.01", "traffic_light.n.01", "sky.n.01", "road.n.01", "food.n.01")
MARKER = (4, 5, 4)
CONSTANT = (5, 5, 4)
ZERO = (4, 4, 4)
FREQUENT, MOVIE4_ONLY, RARE = 6, 6, 7


def run_path(root: Path, subject: str, movie: int) -> Path:
    pe = RUNS[movie][0]
    run = f"tfMRI_MOVIE{movie}_7T_{pe}"
    return Path(root) / subject / "MNINonLinear" / "Results" / run / f"{run}_hp2000_clean.nii.gz"


def default_segments(seconds: Iterable[int]) -> dict[str, list[list[int]]]:
    """Three segments per run (the last one plays the repeated clip), in 24 fps frame numbers."""
    return {str(m): [[48, 240], [300, 480], [24 * (t - 8), 24 * (t - 1)]] for m, t in zip(RUNS, seconds)}


def brain_mask(grid: tuple[int, int, int]) -> np.ndarray:
    """An ellipsoid filling most of the grid, the fixture's in-brain voxels (minus :data:`ZERO`)."""
    axes = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (n / 2) for n in grid], indexing="ij")
    brain = sum(a ** 2 for a in axes) <= 1.0
    brain[ZERO] = False
    return brain


def wordnet_matrix(movie: int, n_seconds: int, n_categories: int) -> np.ndarray:
    """The planted ``(seconds, categories)`` 0/1 labels of one run (see the module docstring)."""
    s = np.arange(n_seconds)[:, None]
    out = np.zeros((n_seconds, n_categories), dtype=np.float32)
    k = np.arange(min(FREQUENT, n_categories))[None, :]
    out[:, : k.shape[1]] = (s + k) % 2 == 0
    if n_categories > MOVIE4_ONLY and movie == 4:
        out[:, MOVIE4_ONLY] = 1
    if n_categories > RARE and movie != 4 and n_seconds > 5:
        out[5, RARE] = 1
    return out


def run_volume(subject_index: int, movie: int, grid: tuple[int, int, int], n_volumes: int, seed: int = 0) -> np.ndarray:
    """The planted float32 ``(X, Y, Z, T)`` volumes of one run."""
    rng = np.random.default_rng([seed, subject_index, movie])
    brain = brain_mask(grid)
    data = np.zeros((*grid, n_volumes), dtype=np.float32)
    data[brain] = 1000 + 50 * subject_index + rng.normal(0, 20, (int(brain.sum()), n_volumes))
    data[MARKER] = 500 + np.arange(n_volumes)
    data[CONSTANT] = 123.0
    data[ZERO] = 0.0
    return data


def write_nifti(path: Path, data: np.ndarray) -> None:
    """A float32 NIfTI-1 ``.nii.gz`` with the HCP MNI affine (sform/qform code 4) and TR = 1 s."""
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(data, dtype=np.float32), AFFINE)
    img.header.set_sform(AFFINE, code=4)
    img.header.set_qform(AFFINE, code=4)
    img.header.set_xyzt_units("mm", "sec")
    zooms = img.header.get_zooms()
    img.header.set_zooms((*zooms[:3], 1.0)[: len(zooms)])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_wordnet(path: Path, runs: dict[int, np.ndarray], synsets: Iterable[str]) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        for movie, data in runs.items():
            fh.create_dataset(RUNS[movie][1], data=data)
        fh.create_dataset("synsets", data=np.array([s.encode() for s in synsets]))


@dataclasses.dataclass
class HCPFixture:
    """What :func:`write_hcp_fixture` wrote."""

    root: Path
    subjects: tuple[str, ...]
    grid: tuple[int, int, int]
    seconds: tuple[int, ...]
    segments: dict[str, list[list[int]]]
    segments_json: Path
    pickle: Path | None
    synsets: tuple[str, ...]
    wordnet: dict[int, np.ndarray]

    def run(self, subject: str, movie: int) -> Path:
        return run_path(self.root, subject, movie)

    def volume(self, subject: str, movie: int) -> np.ndarray:
        import nibabel as nib

        return np.asarray(nib.load(str(self.run(subject, movie))).dataobj, dtype=np.float32)


def write_hcp_fixture(root: Path, *, subjects: Iterable[str] = ("100610", "102311"),
                      grid: tuple[int, int, int] = (9, 10, 8), seconds: tuple[int, ...] = (40, 38, 36, 34),
                      n_categories: int = 12, segments: dict[str, list[list[int]]] | None = None,
                      write_pickle: bool = False, seed: int = 0) -> HCPFixture:
    """Write the tree under ``root`` and return what was planted.

    Args:
        subjects: 6-digit subject ids; subject ``i`` gets values offset by ``50·i``.
        grid: ``(X, Y, Z)`` of every run.
        seconds: ``T`` (volumes = labelled seconds) of movies 1..4.
        n_categories: WordNet categories (names from :data:`SYNSETS`, then ``thingK.n.01``).
        segments: clip segments ('1'..'4' → [[start, end), ...] frames at 24 fps); default
            :func:`default_segments`.
        write_pickle: also write ``clip_times_24.npy``, a pickled dict like Khosla et al.'s.
    """
    root = Path(root)
    subjects = tuple(subjects)
    segments = segments or default_segments(seconds)
    names = tuple(SYNSETS[k] if k < len(SYNSETS) else f"thing{k}.n.01" for k in range(n_categories))
    for i, subject in enumerate(subjects):
        for movie, n_t in zip(RUNS, seconds):
            write_nifti(run_path(root, subject, movie), run_volume(i, movie, grid, n_t, seed))
    wordnet = {m: wordnet_matrix(m, t, n_categories) for m, t in zip(RUNS, seconds)}
    write_wordnet(root / "7T_movie_resources" / "WordNetFeatures.hdf5", wordnet, names)
    import json

    seg_json = root / "clip_segments.json"
    seg_json.write_text(json.dumps({"format": "foundation-hcp-clip-segments/1", "fps": 24,
                                    "source": "tests/plugins/hcp_fixture.py", "segments": segments}))
    pickle = None
    if write_pickle:
        pickle = root / "clip_times_24.npy"
        np.save(pickle, {k: np.asarray(v, dtype=np.int64) for k, v in segments.items()}, allow_pickle=True)
    return HCPFixture(root=root, subjects=subjects, grid=tuple(grid), seconds=tuple(seconds), segments=segments,
                      segments_json=seg_json, pickle=pickle, synsets=names, wordnet=wordnet)
