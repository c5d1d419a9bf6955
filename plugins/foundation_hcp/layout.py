"""The on-disk layout of the WU-Minn HCP 7T movie-watching release, exactly as downloaded.

Nothing here reads data: only names and paths (see ``../shared/docs/DATA_LAYOUTS.md``, HCP section)::

    <root>/<SUBJ>/MNINonLinear/Results/tfMRI_MOVIE<m>_7T_<PE>/tfMRI_MOVIE<m>_7T_<PE>_hp2000_clean.nii.gz
    <root>/7T_movie_resources/WordNetFeatures.hdf5

with ``<SUBJ>`` a 6-digit subject id, movies ``m`` = 1..4 and phase encodings ``PE`` = AP, PA, PA, AP.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

#: the four movie runs, in order
MOVIES: tuple[int, ...] = (1, 2, 3, 4)


@dataclasses.dataclass(frozen=True)
class Movie:
    """One movie run of the 7T protocol.

    Attributes:
        number: 1..4.
        pe: phase-encoding direction of the run (part of the folder and file names).
        code: the run's name in ``WordNetFeatures.hdf5`` and in the movie file names, e.g. ``MOVIE1_CC1``.
    """

    number: int
    pe: str
    code: str

    @property
    def run(self) -> str:
        """``tfMRI_MOVIE1_7T_AP``: the run's folder name and file-name stem."""
        return f"tfMRI_MOVIE{self.number}_7T_{self.pe}"

    @property
    def volume_name(self) -> str:
        """The file name of the run's cleaned MNI volumes."""
        return f"{self.run}_hp2000_clean.nii.gz"


RUNS: dict[int, Movie] = {
    1: Movie(1, "AP", "MOVIE1_CC1"),
    2: Movie(2, "PA", "MOVIE2_HO1"),
    3: Movie(3, "PA", "MOVIE3_CC2"),
    4: Movie(4, "AP", "MOVIE4_HO2"),
}

#: subject folders are 6-digit ids
SUBJECT_PATTERN = re.compile(r"^\d{6}$")

#: where the WordNet labels live under the root, unless ``wordnet:`` names another file
WORDNET_RELPATH = Path("7T_movie_resources") / "WordNetFeatures.hdf5"


def volume_path(root: Path, subject: str, movie: int) -> Path:
    """``<root>/<subject>/MNINonLinear/Results/<run>/<run>_hp2000_clean.nii.gz`` of ``movie``."""
    m = RUNS[movie]
    return Path(root) / subject / "MNINonLinear" / "Results" / m.run / m.volume_name


def missing_runs(root: Path, subject: str) -> list[Path]:
    """The run files of ``subject`` that are not on disk (empty when all four are present)."""
    return [p for p in (volume_path(root, subject, m) for m in MOVIES) if not p.is_file()]


def subject_folders(root: Path) -> list[str]:
    """Every 6-digit folder under ``root``, sorted (as strings, which for 6 digits is numeric order)."""
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir() and SUBJECT_PATTERN.match(p.name))


def resolve(path: str | None, root: Path | None) -> Path | None:
    """An option's path: ``~`` expanded; a relative path is taken relative to the dataset ``root``."""
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    return p
