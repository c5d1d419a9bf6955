"""Movie frames for image guidance: one frame per movie second, only when ``movie_frames:`` is given.

The movies are not part of the volume download; users who have them (``7T_MOVIE1_CC1_v2.mp4`` ...
``7T_MOVIE4_HO2_v2.mp4`` from the HCP 7T movie stimulus release) name their folder. For movie ``m``
the folder must hold, matched by the run code (``MOVIE1_CC1`` ...) in the name:

* a **folder of extracted frames** whose name contains the code, with one image per second named by
  the second (``0000.png``, ``0001.png`` ... or ``.jpg``), read with Pillow; extract it once with
  ``ffmpeg -i 7T_MOVIE1_CC1_v2.mp4 -vf "select=not(mod(n\\,24))" -vsync vfr -start_number 0
  7T_MOVIE1_CC1_v2/%04d.png`` (frame ``24·s`` for second ``s``, as the public code samples them); or
* a **video file** whose name contains the code (``.mp4``/``.mov``/``.mkv``/``.avi``), decoded at time
  ``s`` seconds (frame ``24·s`` at 24 fps) with ``torchcodec`` or PyAV (``av``), whichever is installed.

A folder of frames wins over a video file. Frames are returned as ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from foundation.core.errors import DataError
from foundation_hcp.layout import MOVIES, RUNS

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def _backend() -> str | None:
    for name in ("torchcodec", "av"):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


class MovieFrames:
    """Locates each movie's frames under ``folder`` (checked on construction) and reads them."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
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
                if _backend() is None:
                    raise DataError(f"movie_frames: decoding {files[0]} needs `pip install torchcodec` or "
                                    f"`pip install av`; or extract one frame per second into a folder "
                                    f"(see foundation_hcp.frames) and point movie_frames at it")
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

    def read(self, movie: int, seconds: Sequence[int]) -> list[np.ndarray]:
        """The frames shown at ``seconds`` of ``movie``, ``(H, W, 3)`` uint8 each."""
        src = self.sources[movie]
        if src.is_dir():
            files = self._frame_files(movie)
            out = []
            for s in seconds:
                if s not in files:
                    raise DataError(f"movie_frames: no frame for second {s} of movie {movie} in {src} "
                                    f"(expected an image named {s:04d}.png or .jpg)")
                out.append(_read_image(files[s]))
            return out
        return _decode(src, seconds)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as exc:
        raise DataError(f"movie frame {path} could not be read as an image: {exc}") from exc


def _decode(path: Path, seconds: Sequence[int]) -> list[np.ndarray]:
    backend = _backend()
    try:
        if backend == "torchcodec":
            from torchcodec.decoders import VideoDecoder

            batch = VideoDecoder(str(path)).get_frames_played_at(seconds=[float(s) for s in seconds])
            return [f.permute(1, 2, 0).contiguous().numpy().astype(np.uint8) for f in batch.data]
        if backend == "av":
            import av

            out = []
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for s in seconds:
                    container.seek(int(s / stream.time_base), stream=stream, backward=True)
                    frame = None
                    for frame in container.decode(stream):
                        if frame.time is not None and frame.time >= s - 1e-3:
                            break
                    if frame is None:
                        raise DataError(f"movie file {path} has no frame at second {s}")
                    out.append(frame.to_ndarray(format="rgb24"))
            return out
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"decoding movie file {path} with {backend} failed: {type(exc).__name__}: {exc}") from exc
    raise DataError(f"movie_frames: decoding {path} needs `pip install torchcodec` or `pip install av`")
