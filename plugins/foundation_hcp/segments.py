"""Clip segments of the four movie runs and the train/val/test plan built on them.

**The segments.** A movie run alternates movie clips and rest; the last clip of every run is the same
short test-retest clip (83 s), repeated in all four runs. Three sources, chosen by ``segments:``:

* ``khosla2020`` (default): Khosla et al. (2020)'s published ``clip_times_24.npy`` — movie →
  ``(n_segments, 2)`` ``[start, end)`` frame numbers at 24 fps from the start of the run — shipped
  in this package as ``khosla2020.json`` with its citation and sources, together with their exact
  train/validation sample lists (2000 + 265 ``(movie, frame)`` pairs). Their windows are hand-trimmed:
  they start 4–6 s after and end about 1 s before the WordNet clip boundaries.
* ``wordnet``: derived from the user's own ``WordNetFeatures.hdf5``: rest seconds carry no WordNet
  category (the ``{}`` lines of ``WordNet_MOVIE*.txt``), so every maximal run of seconds with at least
  one category present is a clip, and the last run is the repeated clip (:func:`wordnet_segments`).
* a file: JSON ``{"format": "foundation-hcp-clip-segments/1", "fps": 24, "source": "...",
  "segments": {"1": [[start, end], ...], ..., "4": [...]}}`` (or just the ``"segments"`` mapping), or
  CSV (header ``movie,start,end``, ``#`` comments). Khosla et al.'s pickle ``clip_times_24.npy`` can run
  code when loaded, so it is read only from ``trust_pickle_segments:``; convert it once instead::

    python -m foundation_hcp.segments convert clip_times_24.npy segments.json
    python -m foundation_hcp.segments show segments.json        # seconds per movie and split

**Frames → seconds** (the rule of the public Khosla et al. / CLIP-MUSED code,
``np.arange(start/24, end/24).astype(int)``, in exact integers): segment ``[start, end)`` (end
exclusive) contributes one sample every ``fps`` frames starting at frame ``start``, i.e. the movie
seconds ``floor(start/fps) + k`` for ``k = 0 .. ceil((end - start)/fps) - 1``. A second's label is WordNet row
``s``; its volume is ``s + hemodynamic_delay`` (see the plugin).

**The plan.** Movies 1–3 are train/val, movie 4 is test with its repeated last clip dropped (699
seconds with the Khosla segments). In movies 1–3 the repeated clip stays in train/val (``repeated_clip:
train``, as in the published lists) or is dropped (``repeated_clip: drop``). Two validation rules
(``split:``):

* ``khosla2020`` (:func:`plan_khosla`): the published lists, exactly: 2000 train and 265 validation
  seconds, spread through every clip of movies 1–3 (the list is a random draw, so most validation
  seconds have a training neighbour one second away). It needs the Khosla segments (the lists name
  exactly their seconds); with other segments use ``val_gap``.
* ``val_gap`` (:func:`plan_seconds`), deterministic and seed-free: ``val_seconds`` (paper: 265) are
  split as evenly as possible over movies 1–3 (the first movies take the remainder) and taken as one
  contiguous block at the *end* of each movie's last non-repeated clip(s) — so each block borders a
  rest period on one side — and the ``val_gap`` seconds just before a block, within the same clip, are
  dropped from training, so no training volume is within ``val_gap`` seconds of a validation volume of
  the same clip (the haemodynamic response lasts ~15 s, so adjacent seconds share signal). With the
  Khosla segments, ``val_seconds: 265, val_gap: 0`` gives the same 2000 + 265 counts as the published
  lists, but other seconds in validation; a positive gap removes training seconds.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.errors import DataError, report
from foundation_hcp.layout import MOVIES

FPS = 24
FORMAT = "foundation-hcp-clip-segments/1"
#: Khosla et al. (2020)'s segments and train/val lists, shipped as package data (see the file's citation)
PACKAGED = Path(__file__).with_name("khosla2020.json")
CONVERT_COMMAND = "python -m foundation_hcp.segments convert clip_times_24.npy segments.json"
_NPY_MAGIC = b"\x93NUMPY"


@dataclasses.dataclass(frozen=True)
class Segments:
    """Clip segments per movie.

    Attributes:
        frames: movie (1..4) → ``(n_segments, 2)`` int64 ``[start, end)`` frame numbers, in time order.
        fps: frames per second of the frame numbers (24 for ``clip_times_24``).
        source: where the segments were read from (path and kind), for ``index.json``.
        sha256: checksum of the file read.
    """

    frames: dict[int, np.ndarray]
    fps: int
    source: str
    sha256: str

    def clip_seconds(self, movie: int, clip: int) -> np.ndarray:
        """The movie seconds of segment ``clip`` of ``movie`` (see the module docstring for the rule)."""
        start, end = (int(v) for v in self.frames[movie][clip])
        return segment_seconds(start, end, self.fps)

    def to_json(self) -> dict[str, Any]:
        """The JSON form written by ``convert`` and read back by :func:`load_segments`."""
        return {"format": FORMAT, "fps": self.fps, "source": self.source,
                "segments": {str(m): self.frames[m].astype(int).tolist() for m in sorted(self.frames)}}

    def dumps(self) -> str:
        """:meth:`to_json` as text, one movie per line."""
        data = self.to_json()
        movies = [f'    "{m}": {json.dumps(v)}' for m, v in data["segments"].items()]
        head = [f'  "{k}": {json.dumps(data[k])},' for k in ("format", "fps", "source")]
        return "\n".join(["{", *head, '  "segments": {', ",\n".join(movies), "  }", "}"]) + "\n"

    def write(self, path: Path) -> None:
        """Write :meth:`dumps` atomically to ``path``."""
        from foundation.core.atomic import atomic_open

        with atomic_open(path, "w") as fh:
            fh.write(self.dumps())


def segment_seconds(start: int, end: int, fps: int = FPS) -> np.ndarray:
    """Movie seconds of the frame segment ``[start, end)``: ``start // fps + arange(ceil((end-start)/fps))``.

    This is ``np.arange(start / fps, end / fps).astype(int)`` of the public code computed in exact
    integers: where ``end - start`` is a multiple of ``fps`` and ``start`` is not, the float expression
    can round ``end/fps - start/fps`` up (e.g. ``83.00000000000011``) and add a second past ``end``;
    this rule does not.
    """
    n = -(-(end - start) // fps)
    return start // fps + np.arange(max(n, 0), dtype=np.int64)


# --------------------------------------------------------------------------- reading


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_npy(path: Path) -> bool:
    if path.suffix.lower() == ".npy":
        return True
    with open(path, "rb") as fh:
        return fh.read(len(_NPY_MAGIC)) == _NPY_MAGIC


def _from_pickle(path: Path) -> tuple[Any, int]:
    try:
        obj = np.load(path, allow_pickle=True)
        if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
            obj = obj.item()
    except Exception as exc:
        raise DataError(f"clip segments pickle {path} could not be read ({type(exc).__name__}: {exc}); "
                        f"expected Khosla et al.'s clip_times_24.npy, a pickled dict '1'..'4' -> "
                        f"(n_segments, 2) frame numbers") from exc
    return obj, FPS


def _from_json(path: Path) -> tuple[Any, int]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"clip segments file {path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict) and "segments" in data:
        fps = data.get("fps", FPS)
        if not isinstance(fps, int) or isinstance(fps, bool) or fps < 1:
            raise DataError(f"clip segments file {path}: 'fps' must be a positive integer, got {fps!r}")
        return data["segments"], fps
    return data, FPS


def _from_csv(path: Path) -> tuple[Any, int]:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"clip segments file {path} could not be read as text: {exc}") from exc
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows or [c.strip().lower() for c in rows[0]] != ["movie", "start", "end"]:
        raise DataError(f"clip segments CSV {path} must start with the header 'movie,start,end'")
    out: dict[str, list[list[float]]] = {}
    for i, row in enumerate(rows[1:], start=2):
        try:
            movie, start, end = (c.strip() for c in row)
            out.setdefault(str(int(movie)), []).append([float(start), float(end)])
        except ValueError as exc:
            raise DataError(f"clip segments CSV {path}, data row {i}: expected 'movie,start,end' numbers, "
                            f"got {row!r}") from exc
    return out, FPS


def _validate(raw: Any, fps: int, path: Path, kind: str) -> Segments:
    where = f"clip segments file {path}"
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a mapping movie '1'..'4' -> [[start, end], ...], got {type(raw).__name__}")
    by_movie: dict[int, np.ndarray] = {}
    for key, value in raw.items():
        try:
            movie = int(key)
        except (TypeError, ValueError):
            raise DataError(f"{where}: key {key!r} is not a movie number 1..4") from None
        if movie not in MOVIES:
            raise DataError(f"{where}: key {key!r} is not a movie number 1..4")
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{where}, movie {movie}: segments are not numbers ({exc})") from exc
        if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 1:
            raise DataError(f"{where}, movie {movie}: expected an (n_segments, 2) list of [start, end) frame "
                            f"numbers, got shape {arr.shape}")
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{where}, movie {movie}: frame numbers must be whole numbers")
        arr = arr.astype(np.int64)
        if (arr < 0).any() or (arr[:, 1] <= arr[:, 0]).any():
            bad = int(np.flatnonzero((arr[:, 1] <= arr[:, 0]) | (arr < 0).any(1))[0])
            raise DataError(f"{where}, movie {movie}, segment {bad}: {arr[bad].tolist()} is not a "
                            f"non-empty [start, end) range of frame numbers >= 0")
        if (arr[1:, 0] < arr[:-1, 1]).any():
            bad = int(np.flatnonzero(arr[1:, 0] < arr[:-1, 1])[0]) + 1
            raise DataError(f"{where}, movie {movie}: segment {bad} {arr[bad].tolist()} starts before the "
                            f"previous one ends {arr[bad - 1].tolist()}; segments must be in time order")
        by_movie[movie] = arr
    missing = [m for m in MOVIES if m not in by_movie]
    if missing:
        raise DataError(f"{where}: no segments for movie(s) {missing}; all four runs are needed")
    return Segments(frames=by_movie, fps=fps, source=f"{path} ({kind})", sha256=_sha256(path))


def load_segments(path: Path, *, trusted: bool) -> Segments:
    """Read clip segments from JSON, CSV or (only when ``trusted``) the ``clip_times_24.npy`` pickle.

    Raises:
        DataError: the file is missing, unreadable, malformed, or a pickle that was not trusted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"clip segments file {path} not found (the Khosla et al. 2020 movie clip periods: "
                        f"JSON/CSV, or clip_times_24.npy given as trust_pickle_segments)")
    if _is_npy(path):
        if not trusted:
            raise DataError(
                f"clip segments file {path} is a NumPy pickle (clip_times_24.npy); unpickling runs code, so it "
                f"is not loaded from `segments:`. If you trust the file, name it as `trust_pickle_segments: "
                f"{path}` instead, or convert it once to JSON with `{CONVERT_COMMAND}` and set `segments:` "
                f"to the JSON file")
        raw, fps = _from_pickle(path)
        kind = "trusted pickle"
    elif path.suffix.lower() == ".csv":
        raw, fps = _from_csv(path)
        kind = "CSV"
    else:
        raw, fps = _from_json(path)
        kind = "JSON"
    return _validate(raw, fps, path, kind)


def load_packaged() -> Segments:
    """Khosla et al. (2020)'s segments, shipped in this package (``khosla2020.json``).

    Raises:
        DataError: the file is missing from the installation (package data not installed).
    """
    if not PACKAGED.is_file():
        raise DataError(f"hcp: the packaged Khosla et al. (2020) clip segments {PACKAGED} are missing from this "
                        f"installation (package data of foundation_hcp); reinstall foundation, or set the dataset "
                        f"option `segments:` to a JSON/CSV file or to `wordnet`")
    seg = load_segments(PACKAGED, trusted=False)
    return dataclasses.replace(seg, source=f"khosla2020: Khosla et al. 2020 clip_times_24, shipped as {PACKAGED}")


@dataclasses.dataclass(frozen=True)
class SampleLists:
    """Khosla et al. (2020)'s published train/validation samples, as movie seconds.

    Attributes:
        seconds: split (``train``/``val``) → movie → sorted int64 seconds (``frame // fps``).
        source: the file read.
    """

    seconds: dict[str, dict[int, np.ndarray]]
    source: str


def load_split_lists(path: Path | None = None) -> SampleLists:
    """The ``split`` lists of the packaged ``khosla2020.json`` (``[movie, frame]`` pairs at ``fps``).

    Raises:
        DataError: the file is missing or its lists are malformed, overlap, or name a movie other than 1–3.
    """
    path = Path(path or PACKAGED)
    if not path.is_file():
        raise DataError(f"hcp: split: khosla2020 needs the packaged lists {path}, which are missing from this "
                        f"installation; reinstall foundation or use split: val_gap")
    data = json.loads(path.read_text())
    fps = int(data.get("fps", FPS))
    out: dict[str, dict[int, np.ndarray]] = {}
    for split in ("train", "val"):
        try:
            pairs = np.asarray(data["split"][split], dtype=np.int64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: 'split.{split}' must be a list of [movie, frame] pairs ({exc})") from exc
        if not np.isin(pairs[:, 0], (1, 2, 3)).all():
            raise DataError(f"{path}: 'split.{split}' names movies other than 1-3")
        out[split] = {m: np.unique(pairs[pairs[:, 0] == m, 1] // fps) for m in (1, 2, 3)}
        if sum(len(v) for v in out[split].values()) != len(pairs):
            raise DataError(f"{path}: 'split.{split}' names a movie second twice")
    for m in (1, 2, 3):
        both = np.intersect1d(out["train"][m], out["val"][m])
        if len(both):
            raise DataError(f"{path}: movie {m} second {int(both[0])} is in both split.train and split.val")
    return SampleLists(seconds=out, source=str(path))


def wordnet_segments(presence: dict[int, np.ndarray], *, source: str, sha256: str, fps: int = FPS) -> Segments:
    """Clips derived from the WordNet annotation: every maximal run of seconds with a category present.

    Args:
        presence: movie → ``(seconds, categories)`` bool, WordNet row ``s`` = movie second ``s``.
        source: the labels file (for ``index.json``).
        sha256: its checksum.

    Returns:
        Segments in ``fps`` frame numbers: run ``[a, b)`` seconds → ``[fps·a, fps·b)``; the last run of
        every movie is taken as the repeated clip, as for the published segments.

    Raises:
        DataError: a movie has fewer than two runs (a clip and the repeated clip).
    """
    frames = {}
    for movie in MOVIES:
        busy = np.asarray(presence[movie]).any(axis=1).astype(np.int8)
        edges = np.diff(np.concatenate([[0], busy, [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        if len(starts) < 2:
            raise DataError(f"{source}: movie {movie} has {len(starts)} run(s) of labelled seconds; segments: "
                            f"wordnet needs clips separated by rest seconds without any category (and the "
                            f"repeated clip last)")
        frames[movie] = np.stack([starts, ends], axis=1).astype(np.int64) * fps
    return Segments(frames=frames, fps=fps, source=f"wordnet: runs of labelled seconds in {source}", sha256=sha256)


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which movie second goes to which split.

    Attributes:
        seconds: movie → ``[(second, split), ...]`` in time order (no duplicates).
        dropped: reason → number of in-segment seconds that are not samples (repeated clip, val gap,
            a second already counted by the previous segment).
    """

    seconds: dict[int, list[tuple[int, str]]]
    dropped: dict[str, int]

    def of_split(self, split: str) -> dict[int, np.ndarray]:
        """movie → the seconds of ``split``."""
        return {m: np.array([s for s, sp in v if sp == split], dtype=np.int64) for m, v in self.seconds.items()}

    def counts(self) -> dict[str, int]:
        out = {"train": 0, "val": 0, "test": 0}
        for v in self.seconds.values():
            for _, sp in v:
                out[sp] += 1
        return out


def plan_seconds(seg: Segments, *, val_seconds: int, val_gap: int, repeated_clip: str = "train") -> Plan:
    """The ``val_gap`` rule: assign every in-segment second to train/val/test (module docstring).

    Raises:
        DataError: a movie has too few non-repeated seconds for its share of ``val_seconds``.
    """
    dropped = {"repeated_clip": 0, "val_gap": 0, "duplicate_second": 0}
    shares = [val_seconds // 3 + (1 if i < val_seconds % 3 else 0) for i in range(3)]
    out: dict[int, list[tuple[int, str]]] = {}
    for movie in MOVIES:
        per_clip = _clip_seconds(seg, movie, dropped)
        repeated = per_clip[-1]
        novel = per_clip[:-1]
        if movie == 4 or repeated_clip == "drop":
            dropped["repeated_clip"] += len(repeated)
            repeated = []
        if movie == 4:
            out[movie] = [(s, "test") for clip in novel for s in clip]
            continue
        # (second, clip index) of the non-repeated clips, in time order
        flat = [(s, c) for c, clip in enumerate(novel) for s in clip]
        k = shares[movie - 1]
        if k > len(flat):
            raise DataError(f"{seg.source}: movie {movie} has {len(flat)} seconds in its non-repeated clips, fewer "
                            f"than its share of val_seconds ({k} of {val_seconds})")
        split = ["train"] * len(flat)
        first = len(flat) - k
        for i in range(first, len(flat)):
            split[i] = "val"
        if k and val_gap:
            clip_of_first = flat[first][1]
            for i in range(max(0, first - val_gap), first):
                if flat[i][1] == clip_of_first:
                    split[i] = "gap"
        dropped["val_gap"] += split.count("gap")
        out[movie] = [(s, sp) for (s, _), sp in zip(flat, split) if sp != "gap"] + [(s, "train") for s in repeated]
        out[movie].sort()
    return Plan(seconds=out, dropped=dropped)


def _clip_seconds(seg: Segments, movie: int, dropped: dict[str, int]) -> list[list[int]]:
    """The seconds of each segment of ``movie``; a second already in an earlier segment is counted once."""
    seen: set[int] = set()
    per_clip: list[list[int]] = []
    for c in range(len(seg.frames[movie])):
        secs = []
        for s in seg.clip_seconds(movie, c).tolist():
            if s in seen:
                dropped["duplicate_second"] += 1
                continue
            seen.add(s)
            secs.append(s)
        per_clip.append(secs)
    return per_clip


def plan_khosla(seg: Segments, lists: SampleLists, *, repeated_clip: str = "train") -> Plan:
    """Khosla et al.'s published split: their train/val seconds in movies 1–3, movie 4 as test.

    Raises:
        DataError: the segments' seconds of movies 1–3 are not exactly the seconds the lists name (the
            lists belong to the Khosla segments; other segments need ``split: val_gap``).
    """
    dropped = {"repeated_clip": 0, "val_gap": 0, "duplicate_second": 0}
    out: dict[int, list[tuple[int, str]]] = {}
    for movie in MOVIES:
        per_clip = _clip_seconds(seg, movie, dropped)
        novel, repeated = per_clip[:-1], per_clip[-1]
        if movie == 4:
            dropped["repeated_clip"] += len(repeated)
            out[movie] = [(s, "test") for clip in novel for s in clip]
            continue
        listed = {s: sp for sp in ("train", "val") for s in lists.seconds[sp][movie].tolist()}
        ours = {s for clip in per_clip for s in clip}
        if ours != set(listed):
            extra, missing = sorted(ours - set(listed)), sorted(set(listed) - ours)
            raise DataError(f"hcp: split: khosla2020 assigns exactly the seconds of Khosla et al.'s lists "
                            f"({lists.source}), but the clip segments {seg.source} differ in movie {movie}: "
                            f"{len(extra)} second(s) not in the lists (first {extra[:3]}), {len(missing)} listed "
                            f"second(s) outside the segments (first {missing[:3]}); use segments: khosla2020, or "
                            f"split: val_gap with these segments")
        drop = set(repeated) if repeated_clip == "drop" else set()
        dropped["repeated_clip"] += len(drop)
        out[movie] = sorted((s, listed[s]) for s in ours if s not in drop)
    return Plan(seconds=out, dropped=dropped)


# --------------------------------------------------------------------------- command line


def _convert(src: Path, dst: Path) -> int:
    # The user runs this command on a file they chose: that is the explicit trust the pickle needs.
    seg = load_segments(src, trusted=True)
    seg = dataclasses.replace(seg, source=f"converted from {src.name} (sha256 {seg.sha256})")
    seg.write(dst)
    total = {m: sum(len(seg.clip_seconds(m, c)) for c in range(len(seg.frames[m]))) for m in MOVIES}
    print(f"wrote {dst}: segments per movie {[len(seg.frames[m]) for m in MOVIES]}, in-segment seconds {total}")
    return 0


def _show(path: str, split: str, val_seconds: int, val_gap: int) -> int:
    seg = load_packaged() if path == "khosla2020" else load_segments(Path(path), trusted=False)
    if split == "khosla2020":
        plan = plan_khosla(seg, load_split_lists())
    else:
        plan = plan_seconds(seg, val_seconds=val_seconds, val_gap=val_gap)
    for m in MOVIES:
        print(f"movie {m}: " + ", ".join(f"[{a}, {b})" for a, b in seg.frames[m].tolist()))
    print(f"seconds per split (before the hemodynamic delay drops any): {plan.counts()}; not samples: {plan.dropped}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m foundation_hcp.segments {convert,show} ...``."""
    parser = argparse.ArgumentParser(prog="python -m foundation_hcp.segments",
                                     description="Convert or inspect HCP 7T movie clip segments.")
    parser.add_argument("--traceback", action="store_true", help="on an error, print the full traceback too")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="convert a TRUSTED clip_times_24.npy pickle (or JSON/CSV) to JSON; "
                                          "loading a pickle runs code, so only convert a file you trust")
    conv.add_argument("src", type=Path)
    conv.add_argument("dst", type=Path)
    show = sub.add_parser("show", help="print the segments and the seconds per split of a JSON/CSV file (or of "
                                       "the packaged Khosla et al. 2020 segments: khosla2020)")
    show.add_argument("path")
    show.add_argument("--split", choices=("khosla2020", "val_gap"), default="val_gap")
    show.add_argument("--val-seconds", type=int, default=265)
    show.add_argument("--val-gap", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            return _convert(args.src, args.dst)
        return _show(args.path, args.split, args.val_seconds, args.val_gap)
    except DataError as exc:  # one printer for every entry point: plain ids, exit status 2, the traceback on demand
        return report(exc, full_traceback=args.traceback, flag="--traceback")


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
