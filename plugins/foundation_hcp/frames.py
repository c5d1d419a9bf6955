"""Movie frames for image guidance: one frame per movie second, only when ``movie_frames:`` is given.

The movies are not part of the volume download; users who have them (the HCP 7T movie stimulus
release, ``7T_MOVIE1_CC1_v2.mp4`` ... ``7T_MOVIE4_HO2_v2.mp4``; *file names unverified*, so any name
containing the run code is accepted) name their folder. For movie ``m`` the folder must hold, matched
by the run code (``MOVIE1_CC1`` ...) in the name:

* a **video file** (``.mp4``/``.mov``/``.mkv``/``.avi``/``.m4v``), decoded with PyAV
  (``pip install "foundation[movies]"``). Second ``s`` shows the first frame whose presentation time is
  at or after ``s`` seconds (half a frame of tolerance): frame ``24·s`` at 24 fps, as the public code
  samples them. The first read of a movie decodes it once, front to back, and keeps the frames of every
  sample second of that movie (the plan's seconds, plus any other second asked for) as
  ``<frames_cache>/<movie file>-<size>-<sha256 of its first MiB>/<second:04d>.png``, lossless; later
  reads (and later shard builds) load those PNGs. A partial cache is completed by another pass.
* a **folder of extracted frames** whose name contains the code, one image per second named by the
  second (``0000.png``, ``0001.png`` ... or ``.jpg``), read with Pillow, e.g. from
  ``ffmpeg -i 7T_MOVIE1_CC1_v2.mp4 -vf "select=not(mod(n\\,24))" -vsync vfr -start_number 0
  7T_MOVIE1_CC1_v2/%04d.png``.

A folder of frames wins over a video file. Frames are returned as ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError
from foundation_hcp.layout import MOVIES, RUNS

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
INSTALL = 'pip install "foundation[movies]"  (PyAV)'


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/foundation/hcp_frames`` (``~/.cache/foundation/hcp_frames``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "foundation" / "hcp_frames"


def _have_av() -> bool:
    return importlib.util.find_spec("av") is not None


class MovieFrames:
    """Locates each movie's frames under ``folder`` (checked on construction) and reads them.

    Args:
        folder: the ``movie_frames`` folder.
        cache: where frames decoded from video files are kept (see the module docstring).
        seconds: movie → the seconds to decode in the first pass over a video (the plan's samples).
    """

    def __init__(self, folder: Path, *, cache: Path | None = None,
                 seconds: Mapping[int, Iterable[int]] | None = None) -> None:
        self.folder = Path(folder)
        self.cache = Path(cache) if cache is not None else default_cache()
        self.wanted = {m: sorted(set(v)) for m, v in (seconds or {}).items()}
        if not self.folder.is_dir():
            raise DataError(f"movie_frames folder {self.folder} not found (the folder of the 7T movie files "
                            f"7T_MOVIE1_CC1_v2.mp4 ... or of frames extracted from them)")
        self.sources: dict[int, Path] = {}
        for movie in MOVIES:
            code = RUNS[movie].code
            found = sorted(p for p in self.folder.iterdir() if code in p.name and
                           (p.is_dir() or p.suffix.lower() in VIDEO_SUFFIXES))
            dirs = [p for p in found if p.is_dir()]
            files = [p for p in found if p.is_file()]
            if dirs:
                if len(dirs) > 1:
                    raise DataError(f"movie_frames {self.folder}: several frame folders match {code}: "
                                    f"{[p.name for p in dirs]}; keep one")
                self.sources[movie] = dirs[0]
            elif files:
                if len(files) > 1:
                    raise DataError(f"movie_frames {self.folder}: several movie files match {code}: "
                                    f"{[p.name for p in files]}; keep one")
                if not _have_av():
                    raise DataError(f"movie_frames: decoding {files[0]} needs PyAV: {INSTALL}; or extract one "
                                    f"frame per second into a folder (see foundation_hcp.frames) and point "
                                    f"movie_frames at it")
                self.sources[movie] = files[0]
            else:
                raise DataError(f"movie_frames {self.folder}: no movie file or frame folder for movie {movie} "
                                f"(a name containing {code!r}, e.g. 7T_{code}_v2.mp4)")
        self._index: dict[int, dict[int, Path]] = {}

    def describe(self) -> str:
        return "; ".join(f"movie {m}: {self.sources[m].name}" for m in MOVIES)

    def _frame_files(self, movie: int) -> dict[int, Path]:
        if movie not in self._index:
            index: dict[int, Path] = {}
            for p in self.sources[movie].iterdir():
                m = re.fullmatch(r"\D*(\d+)", p.stem)
                if p.suffix.lower() in IMAGE_SUFFIXES and m:
                    index[int(m.group(1))] = p
            self._index[movie] = index
        return self._index[movie]

    def cache_dir(self, movie: int) -> Path:
        """The cache folder of ``movie``'s video file: its name, size and the sha256 of its first MiB."""
        src = self.sources[movie]
        with open(src, "rb") as fh:
            head = hashlib.sha256(fh.read(1 << 20)).hexdigest()[:16]
        return self.cache / f"{src.name}-{src.stat().st_size}-{head}"

    def read(self, movie: int, seconds: Sequence[int]) -> list[np.ndarray]:
        """The frames shown at ``seconds`` of ``movie``, ``(H, W, 3)`` uint8 each."""
        src = self.sources[movie]
        if src.is_dir():
            files = self._frame_files(movie)
            missing = [s for s in seconds if s not in files]
            if missing:
                raise DataError(f"movie_frames: no frame for second {missing[0]} of movie {movie} in {src} "
                                f"(expected an image named {missing[0]:04d}.png or .jpg)")
            return [_read_image(files[s]) for s in seconds]
        folder = self.cache_dir(movie)
        todo = sorted({s for s in seconds if not (folder / f"{s:04d}.png").is_file()})
        if todo:
            want = sorted(set(todo) | {s for s in self.wanted.get(movie, ()) if not (folder / f"{s:04d}.png").is_file()})
            for s, frame in decode_seconds(src, want):
                _write_png(folder / f"{s:04d}.png", frame)
        return [_read_image(folder / f"{s:04d}.png") for s in seconds]


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"movie frame {path} could not be read as an image: {exc}") from exc


def _write_png(path: Path, frame: np.ndarray) -> None:
    from PIL import Image

    from foundation.core.atomic import atomic_open

    with atomic_open(path, "wb") as fh:
        Image.fromarray(frame).save(fh, format="PNG")


def decode_seconds(path: Path, seconds: Sequence[int]) -> Iterable[tuple[int, np.ndarray]]:
    """``(second, frame)`` for every second of ``seconds`` (sorted), in one front-to-back pass over ``path``.

    Second ``s`` gets the first frame whose presentation time is ``>= s`` less half a frame.

    Raises:
        DataError: PyAV is missing, the file cannot be decoded, or it ends before the last second.
    """
    if not _have_av():
        raise DataError(f"movie_frames: decoding {path} needs PyAV: {INSTALL}")
    import av

    pending = sorted(set(int(s) for s in seconds))
    if not pending:
        return
    last = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 24)
            tolerance = 0.5 / rate
            for frame in container.decode(stream):
                if frame.time is None:
                    continue
                last = frame.time
                if frame.time < pending[0] - tolerance:
                    continue
                image = frame.to_ndarray(format="rgb24")
                while pending and frame.time >= pending[0] - tolerance:
                    yield pending.pop(0), image
                if not pending:
                    return
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"decoding movie file {path} with PyAV failed: {type(exc).__name__}: {exc}") from exc
    raise DataError(f"movie file {path} ends at {last} s, before second {pending[0]} (still needed: {len(pending)} "
                    f"seconds); is it the movie of this run?")
