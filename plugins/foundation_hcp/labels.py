"""WordNet labels of the movie seconds (``7T_movie_resources/WordNetFeatures.hdf5``).

The file holds one dataset per run, ``MOVIE1_CC1``, ``MOVIE2_HO1``, ``MOVIE3_CC2``, ``MOVIE4_HO2``, each
``(seconds, categories)``, and ``synsets``, the category names (``plant.n.02``; stored as bytes). Row
``s`` annotates movie second ``s``. The number of categories is read from the file.

* A category is **present** in a second when its value is ``> 0`` (the released values are 0/1
  indicators; thresholding at 0 keeps the rule right if they are weights).
* The model's classes are the categories whose **frequency** — the fraction of the training seconds
  in which they are present — is ``> label_threshold`` (paper: 0.1, which keeps 53).
* A second's **text** (for text guidance) joins the words of all categories present in it, in file
  order and without repeats: ``plant.n.02`` → ``plant``, ``traffic_light.n.01`` → ``traffic light``
  (paper, Appendix A: "we concatenate the WordNet annotations of each movie frame").
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError
from foundation_hcp.layout import MOVIES, RUNS


@dataclasses.dataclass(frozen=True)
class WordNet:
    """The WordNet annotation of the four runs.

    Attributes:
        path: the file read.
        synsets: category names, in column order.
        runs: movie → ``(seconds, categories)`` bool presence matrix.
    """

    path: Path
    synsets: tuple[str, ...]
    runs: dict[int, np.ndarray]

    def rows(self, movie: int) -> int:
        return int(self.runs[movie].shape[0])

    def text(self, movie: int, second: int) -> str:
        """The words of the categories present in ``second`` of ``movie``, joined by ``", "``."""
        words = dict.fromkeys(word(self.synsets[k]) for k in np.flatnonzero(self.runs[movie][second]))
        return ", ".join(words)


def word(synset: str) -> str:
    """``plant.n.02`` → ``plant``; ``traffic_light.n.01`` → ``traffic light``."""
    return synset.split(".", 1)[0].replace("_", " ")


def _name(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _name(value.item())
    return str(value)


def read_wordnet(path: Path) -> WordNet:
    """Read the four run datasets and ``synsets``, checking that their shapes agree.

    Raises:
        DataError: the file is missing or unreadable, a dataset is missing, shapes disagree, or values
            are not finite; the message names the file and the dataset.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DataError(f"WordNet labels file {path} not found (HCP 7T movie resources: "
                        f"7T_movie_resources/WordNetFeatures.hdf5 under the dataset root, or set `wordnet:`)")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"WordNet labels file {path} could not be opened as HDF5: {exc}") from exc
    with fh:
        keys = sorted(fh.keys())
        if "synsets" not in fh:
            raise DataError(f"WordNet labels file {path} has no dataset 'synsets' (category names); it has {keys}")
        synsets = tuple(_name(v) for v in np.asarray(fh["synsets"][()]).reshape(-1))
        runs = {}
        for movie in MOVIES:
            code = RUNS[movie].code
            if code not in fh:
                raise DataError(f"WordNet labels file {path} has no dataset {code!r} (labels of movie {movie}); "
                                f"it has {keys}")
            data = np.asarray(fh[code][()])
            if data.ndim != 2 or data.shape[1] != len(synsets):
                raise DataError(f"WordNet labels file {path}, dataset {code!r}: shape {data.shape}, expected "
                                f"(seconds, {len(synsets)}) for the {len(synsets)} names in 'synsets'")
            if not np.issubdtype(data.dtype, np.number) and data.dtype != bool:
                raise DataError(f"WordNet labels file {path}, dataset {code!r}: dtype {data.dtype} is not numeric")
            if not np.isfinite(data.astype(np.float64)).all():
                raise DataError(f"WordNet labels file {path}, dataset {code!r}: has NaN or Inf values")
            runs[movie] = data > 0
    return WordNet(path=path, synsets=synsets, runs=runs)


def select_categories(wn: WordNet, train: dict[int, np.ndarray], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Columns whose frequency over the training seconds is ``> threshold``.

    Args:
        train: movie → training seconds (WordNet rows).

    Returns:
        ``(kept column indices, frequency of every column)``.

    Raises:
        DataError: there are no training seconds, or no category passes the threshold.
    """
    rows = [wn.runs[m][secs] for m, secs in train.items() if len(secs)]
    if not rows:
        raise DataError(f"hcp: no training seconds to select WordNet categories from ({wn.path})")
    present = np.concatenate(rows, axis=0)
    freq = present.mean(axis=0)
    kept = np.flatnonzero(freq > threshold)
    if not len(kept):
        raise DataError(f"hcp: no WordNet category of {wn.path} is present in more than label_threshold = "
                        f"{threshold} of the {present.shape[0]} training seconds (highest frequency "
                        f"{freq.max():.3f}); lower label_threshold")
    return kept, freq
