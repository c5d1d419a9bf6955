"""``foundation predict RUN_DIR INPUT``: decode labels for new scans of subjects the run was trained on.

The run's selected weights (``best/model.safetensors`` + ``model.json``) are rebuilt without pickle and
applied batch by batch to one of three kinds of input:

* **shards** — a tar written by ``foundation shard`` or a directory of them.  Every sample names its
  subject in its ``json`` member; the dataset is the one of the ``index.json`` next to or above the
  tars (or ``dataset=``).  Volume shards need that index: it holds the subjects' brain masks.
* **a .npy array** ``(N, n_tokens, token_dim)`` of one subject of an ROI dataset.
* **a NIfTI image** ``(X, Y, Z, N)`` (or one ``(X, Y, Z)`` volume) of one subject of a volume dataset,
  on the dataset's grid.  Its in-mask voxels are taken exactly as ``foundation shard`` stores them
  (the subject's mask from the run's shard index, C order), so the mask must be on this machine.

Arrays and images are rounded to float16 first, as the shards the model was trained on are: the same
scan gives the same probabilities whichever way it comes in.

Each prediction is a record ``{"key", "subject", "probabilities": {label: p}, "predicted": [labels]}``
(``key`` is the sample key for shards, the 0-based sample index for arrays and images), written as
JSON (a list of records) or CSV (``key, subject, <one column per label>, predicted``; ``predicted``
joins the labels with ``p > threshold`` by ``;``).

Length (~580 lines, over the ~400 guide): the three input kinds (shards, arrays, NIfTI) share the subject
resolution and chunked inference above; one module keeps their checks identical.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from foundation.core.api import DatasetInfo
from foundation.core.atomic import TMP_PREFIX, atomic_open
from foundation.data.index import INDEX_NAME, ShardIndex, read_index
from foundation.core.errors import DataError, FoundationError, ShardError, UnknownSubjectError

log = logging.getLogger("foundation.predict")

Format = Literal["json", "csv"]
FORMATS: tuple[Format, ...] = ("json", "csv")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: the largest magnitude float16 (the shards' fMRI dtype) can hold
_FLOAT16_MAX = 65504.0
#: how many directory levels above a tar are searched for its index.json
_INDEX_LEVELS = 3


@dataclasses.dataclass
class _Chunk:
    """One batch of one dataset, ready for the model.

    Attributes:
        dataset: the model's dataset id.
        fmri: ROI ``(B, T, D)`` or volume ``(B, V_max)`` (zero-padded in-mask voxels), float32.
        subjects: global subject ids ``dataset/subject``, length B.
        keys: sample keys (shards) or 0-based sample indices (arrays, images), length B.
        voxel_index: volume datasets ``(B, V_max)`` int64 flat grid positions, else ``None``.
    """

    dataset: str
    fmri: torch.Tensor
    subjects: list[str]
    keys: list[str] | list[int]
    voxel_index: torch.Tensor | None = None


# --------------------------------------------------------------------------- public entry point
def predict_run(
    run_dir: str | Path,
    input: str | Path,
    *,
    subject: str | None = None,
    dataset: str | None = None,
    output: str | Path | None = None,
    fmt: Format | None = None,
    batch_size: int = 256,
    threshold: float = 0.5,
    device: str | torch.device = "cpu",
    progress: bool = True,
    raw: bool = False,
) -> list[dict[str, Any]]:
    """Predict label probabilities for every sample of ``input`` with the run's best weights.

    Args:
        run_dir: run directory (holds ``best/``; ``config.yaml`` / ``metrics.json`` locate its shards).
        input: shard tar, directory of shard tars, ``.npy`` array or ``.nii``/``.nii.gz`` image.
        subject: the scans' subject, ``"dataset/subject"`` or a bare id when the dataset is known
            (required for arrays and images; for shards it keeps only that subject's samples).
        dataset: the model's dataset the input belongs to (default: the shard index's, or the model's
            only dataset).
        output: write the predictions here (atomically); ``None`` writes nothing.
        fmt: ``"json"`` or ``"csv"``; default from ``output``'s suffix, else JSON.
        batch_size: samples per forward pass.
        threshold: a label is ``predicted`` when its probability is above this.
        device: where the model runs.
        progress: show a tqdm progress bar.
        raw: ``input`` holds raw scans of ``subject`` (a ``.npy`` array or NIfTI image in the layout
            the ROI dataset plugin's ``encode_raw`` documents), turned into tokens by that plugin
            with the artifacts it saved next to the run's shards (see :mod:`foundation.workflows.raw`).

    Returns:
        One record per sample, in input order: ``{"key", "subject", "probabilities", "predicted"}``.

    Raises:
        UnknownSubjectError: a subject the model has no tokens for (names it and the known ones).
        DataError: malformed input (wrong shape or dtype, NaN/Inf), naming the file and the sample.
        CheckpointError: ``run_dir`` holds no saved model.
    """
    from foundation.core.progress import progress as progress_bar

    from foundation.engine.checkpoint import load_model

    run_dir, input = Path(run_dir), Path(input)
    if batch_size < 1:
        raise FoundationError(f"batch_size must be at least 1, got {batch_size}")
    if not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):  # NaN fails too
        raise FoundationError(f"--threshold must be a probability in [0, 1], got {threshold!r}")
    device = check_device(device)
    fmt = resolve_format(fmt, output)
    if not input.exists():
        raise DataError(f"input {input} does not exist")
    model, _ = load_model(run_dir / "best", device=device)
    model.eval()

    if raw:
        ds, gid = _resolve_subject(model, subject, dataset, input=input)
        info = model.infos[ds]
        if info.kind != "roi":
            raise DataError(f"{input}: --raw is for ROI datasets; dataset {dataset or ds!r} is a volume dataset, "
                            f"whose raw scans are given directly as a NIfTI image (X, Y, Z, N) on the grid {info.grid}")
        from foundation.workflows.raw import raw_plugin, raw_tokens

        plugin = raw_plugin(run_dir, ds, tuple(info.token_shape))
        index = run_shard_index(
            run_dir, ds, contents=" (with what the plugin's artifacts() saved)",
            needed_for=f"dataset plugin {plugin.name!r} turns raw scans into tokens with the files it saved in")
        tokens = raw_tokens(plugin, input, gid.split("/", 1)[1], tuple(info.token_shape), artifacts=index.root,
                            dataset=ds)
        total, chunks = _token_chunks(tokens, input, ds, gid, batch_size=batch_size)
    elif input.is_dir() or input.suffix == ".tar":
        total, chunks = _shard_chunks(model, input, subject=subject, dataset=dataset, batch_size=batch_size)
    elif input.suffix == ".npy":
        ds, gid = _resolve_subject(model, subject, dataset, input=input)
        total, chunks = _array_chunks(model, input, ds, gid, batch_size=batch_size)
    elif input.name.endswith(NIFTI_SUFFIXES):
        ds, gid = _resolve_subject(model, subject, dataset, input=input)
        total, chunks = _nifti_chunks(model, run_dir, input, ds, gid, batch_size=batch_size)
    else:
        raise DataError(f"input {input}: expected a shard .tar or a directory of them, a .npy array or a "
                        f"NIfTI image ({', '.join(NIFTI_SUFFIXES)})")

    records: list[dict[str, Any]] = []
    bar = progress_bar(total=total, desc=f"predict {input.name}", unit="sample", enabled=progress)
    with torch.no_grad():
        for chunk in chunks:
            probs = _probabilities(model, chunk, device=device)
            names = model.infos[chunk.dataset].label_names
            for key, gid, p in zip(chunk.keys, chunk.subjects, probs.tolist()):
                records.append({
                    "key": key,
                    "subject": gid,
                    "probabilities": dict(zip(names, p)),
                    "predicted": [n for n, v in zip(names, p) if v > threshold],
                })
            bar.update(len(chunk.keys))
    bar.close()
    if output is not None:
        with atomic_open(output, "w") as fh:
            fh.write(format_predictions(records, fmt))
    return records


def resolve_format(fmt: str | None, output: str | Path | None) -> Format:
    """``fmt`` if given, else the suffix of ``output`` (``.json`` / ``.csv``), else ``"json"``."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise FoundationError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
        return fmt  # type: ignore[return-value]
    if output is None:
        return "json"
    suffix = Path(output).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise FoundationError(f"cannot tell the output format from {output} (suffix {Path(output).suffix!r}); "
                              f"name it .json or .csv, or pass the format ({' or '.join(FORMATS)})")
    return suffix  # type: ignore[return-value]


def format_predictions(records: Sequence[dict[str, Any]], fmt: Format) -> str:
    """Render records as JSON (a list) or CSV (one probability column per label name, in model order)."""
    if fmt == "json":
        return json.dumps(list(records), indent=2) + "\n"
    if fmt != "csv":
        raise FoundationError(f"unknown output format {fmt!r}; choose one of {FORMATS}")
    labels = list(dict.fromkeys(name for r in records for name in r["probabilities"]))  # union, in order
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "subject", *labels, "predicted"])
    for r in records:
        p = r["probabilities"]
        writer.writerow([r["key"], r["subject"], *[repr(p[n]) if n in p else "" for n in labels],
                         ";".join(r["predicted"])])
    return buf.getvalue()


# --------------------------------------------------------------------------- model application
def _probabilities(model, chunk: _Chunk, *, device: str | torch.device) -> np.ndarray:
    """Sigmoid of the logits of one chunk: ``(B, C)`` float32."""
    idx = model.subject_index(chunk.subjects).to(device)
    voxel_index = None if chunk.voxel_index is None else chunk.voxel_index.to(device)
    out = model(chunk.dataset, chunk.fmri.to(device), idx, voxel_index=voxel_index)
    return torch.sigmoid(out.logits.float()).cpu().numpy()


def _known(model, dataset: str | None = None) -> list[str]:
    return [k for k in model.vocab if dataset is None or k.startswith(dataset + "/")]


def _check_known(model, gids: Iterable[str], *, source: Path) -> None:
    """Raise :class:`UnknownSubjectError` naming the unknown subjects, ``source`` and the known ones."""
    vocab = set(model.vocab)
    unknown = sorted(set(gids) - vocab)
    if unknown:
        raise UnknownSubjectError(
            f"{source}: subject(s) {unknown} unknown to this model; it knows {_known(model)} "
            f"(a new subject needs training before its scans can be decoded)")


def _resolve_subject(model, subject: str | None, dataset: str | None, *, input: Path) -> tuple[str, str]:
    """``(dataset, "dataset/subject")`` of the subject of an array or image; checks the model knows it."""
    datasets = sorted(model.infos)
    if subject is None:
        raise FoundationError(f"{input}: an array or image holds no subject id; pass the subject "
                              f"(one of {_known(model)})")
    if dataset is not None and dataset not in model.infos:
        raise DataError(f"unknown dataset {dataset!r}; this model has {datasets}")
    if "/" in subject:
        ds, _, bare = subject.partition("/")
        if dataset is not None and ds != dataset:
            raise FoundationError(f"subject {subject!r} belongs to dataset {ds!r}, not to the given {dataset!r}")
        if ds not in model.infos:
            raise UnknownSubjectError(f"{input}: subject {subject!r} names dataset {ds!r}, but this model has "
                                      f"{datasets}; known subjects: {_known(model)}")
    elif dataset is not None or len(datasets) == 1:
        ds, bare = dataset or datasets[0], subject
    else:
        raise FoundationError(f"subject {subject!r} is ambiguous: this model has datasets {datasets}; "
                              f"write it as 'dataset/subject' or pass the dataset")
    gid = f"{ds}/{bare}"
    _check_known(model, [gid], source=input)
    return ds, gid


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _check_finite(x: np.ndarray, *, input: Path, first: int) -> None:
    """``x`` ``(B, ...)`` holds samples ``first..first+B-1`` of ``input``: no NaN/Inf, float16 range."""
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat)
    if bad.any():
        i = int(np.flatnonzero(bad.any(1))[0])
        raise DataError(f"{input}: sample {first + i} has {int(np.isnan(flat[i]).sum())} NaN and "
                        f"{int(np.isinf(flat[i]).sum())} Inf values (of {flat.shape[1]})")
    big = np.abs(flat).max(1, initial=0) > _FLOAT16_MAX
    if big.any():
        i = int(np.flatnonzero(big)[0])
        raise DataError(f"{input}: sample {first + i} has values beyond the float16 range the model was trained "
                        f"in (max |x| = {np.abs(flat[i]).max():.3g}); normalise it as the dataset plugin does")


def _as_model_input(x: np.ndarray) -> torch.Tensor:
    """Round to float16 exactly as the shards store fMRI, then float32 for the model."""
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float16)).float()


def _check_compatible(info: DatasetInfo, index: ShardIndex, dataset: str) -> None:
    """The shard index describes inputs of the shape the model's ``dataset`` takes."""
    other = index.info
    mine = (info.kind, info.token_shape, info.grid)
    theirs = (other.kind, other.token_shape, other.grid)
    if mine != theirs:
        raise DataError(f"{index.root / INDEX_NAME} describes {other.kind} inputs (tokens {other.token_shape}, "
                        f"grid {other.grid}), but the model's dataset {dataset!r} takes {info.kind} inputs "
                        f"(tokens {info.token_shape}, grid {info.grid})")


# --------------------------------------------------------------------------- shards
def _find_index_root(tar: Path) -> Path | None:
    """The shard directory whose ``index.json`` lies next to or up to two levels above ``tar``."""
    for d in list(tar.resolve().parents)[:_INDEX_LEVELS]:
        if (d / INDEX_NAME).is_file():
            return d
    return None


def _list_tars(input: Path) -> list[Path]:
    if input.is_file():
        return [input]
    tars = sorted(p for p in input.glob("*.tar") if not p.name.startswith(TMP_PREFIX))
    if not tars:  # a shard directory (train/ val/ test/) or a folder of them
        tars = sorted(p for p in input.rglob("*.tar") if not p.name.startswith(TMP_PREFIX))
    if not tars:
        raise DataError(f"{input}: no shard .tar files in this directory or below it")
    return tars


def _shard_chunks(model, input: Path, *, subject: str | None, dataset: str | None,
                  batch_size: int) -> tuple[int | None, Iterator[_Chunk]]:
    """Chunks of every sample in the tars of ``input``, grouped by the shard directory they belong to."""
    from foundation.data.loader import collate, decode
    from foundation.data.tars import read_tars
    from foundation.data.voxels import VoxelIndexBank

    if dataset is not None and dataset not in model.infos:
        raise DataError(f"unknown dataset {dataset!r}; this model has {sorted(model.infos)}")
    groups: dict[Path | None, list[Path]] = {}
    for tar in _list_tars(input):
        groups.setdefault(_find_index_root(tar), []).append(tar)

    plans = []
    total: int | None = 0
    for root, tars in groups.items():
        index = read_index(root, check_files=False) if root is not None else None
        ds = dataset or (index.dataset if index is not None else None)
        if ds is None:
            if len(model.infos) != 1:
                raise ShardError(f"{tars[0]}: no {INDEX_NAME} next to or above it names its dataset; pass the "
                                 f"dataset (one of {sorted(model.infos)})")
            ds = next(iter(model.infos))
        if ds not in model.infos:
            raise ShardError(f"{root / INDEX_NAME if root else tars[0]}: dataset {ds!r} is not one of the model's "
                             f"{sorted(model.infos)}; pass the dataset the shards belong to")
        info = model.infos[ds]
        expected: dict[str, int] = {}
        checksums: dict[str, dict] = {}
        if index is not None:
            _check_compatible(info, index, ds)
            for split_entries in index.data["shards"].values():
                for e in split_entries:
                    expected[str((index.root / e["path"]).resolve())] = int(e["count"])
            checksums = {str(Path(k).resolve()): v for k, v in index.checksums().items()}
        bank = None
        if info.kind == "volume":
            if index is None:
                raise ShardError(f"{tars[0]}: volume shards need the {INDEX_NAME} (and masks/) of their shard "
                                 f"directory next to or above the tars: it holds the subjects' brain masks")
            bank = VoxelIndexBank(index, list(index.data["subjects"]))
        urls = [str(t.resolve()) for t in tars]
        if total is not None:
            counts = [expected.get(u) for u in urls]
            total = None if subject is not None or None in counts else total + sum(counts)  # type: ignore[arg-type]
        plans.append((index, ds, info, urls, expected, checksums, bank))

    keep: str | None = None
    if subject is not None:  # keep only this subject's samples
        shard_datasets = {p[1] for p in plans}
        only = dataset or (next(iter(shard_datasets)) if len(shard_datasets) == 1 else None)
        _, keep = _resolve_subject(model, subject, only, input=input)

    def chunks() -> Iterator[_Chunk]:
        n = 0
        for index, ds, info, urls, expected, checksums, bank in plans:
            samples = (decode(s) for s in read_tars(({"url": u} for u in urls), expected=expected,
                                                    checksums=checksums))
            if keep is not None:
                samples = (s for s in samples if f"{ds}/{s['meta']['subject']}" == keep)
            num_labels = index.info.num_labels if index is not None else info.num_labels
            for group in _chunks(samples, batch_size):
                batch = collate(group, dataset=ds, num_labels=num_labels,
                                fmri_shape=tuple(info.token_shape) if info.kind == "roi" else None,
                                pad_voxels=bank.v_max if bank is not None else None)
                _check_known(model, batch.subjects, source=Path(group[0]["url"]))
                voxel_index = None
                if bank is not None:
                    voxel_index = bank([f"{index.dataset}/{s.split('/', 1)[1]}" for s in batch.subjects])
                n += len(batch)
                yield _Chunk(ds, batch.fmri.float(), batch.subjects, batch.keys, voxel_index)
        if keep is not None and n == 0:
            raise DataError(f"{input}: no samples of subject {keep!r} in these shards")

    return total, chunks()


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device` that exists here; else a :class:`FoundationError` naming it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise FoundationError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps): "
                              f"{exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FoundationError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise FoundationError(f"--device {device}: there are {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise FoundationError(f"--device {device}: MPS is not available here; use --device cpu")
    return dev


# --------------------------------------------------------------------------- arrays
def _array_chunks(model, input: Path, dataset: str, gid: str, *,
                  batch_size: int) -> tuple[int, Iterator[_Chunk]]:
    """Chunks of a ``(N, n_tokens, token_dim)`` ``.npy`` array of one subject of an ROI dataset."""
    info = model.infos[dataset]
    if info.kind != "roi":
        raise DataError(f"{input}: dataset {dataset!r} is a volume dataset; give its scans as a NIfTI image "
                        f"(X, Y, Z, N) on the grid {info.grid}, or as shards")
    with open(input, "rb") as fh:
        head = fh.read(6)
    if head != b"\x93NUMPY":  # e.g. a text file named .npy: numpy would call it "pickled data"
        raise DataError(f"{input}: not a .npy file (it does not start with the NumPy header; it starts with "
                        f"{head!r}); save the array with numpy.save")
    try:
        arr = np.load(input, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{input}: not a plain .npy array ({type(exc).__name__}: {exc})") from exc
    expected = tuple(info.token_shape)  # type: ignore[arg-type]
    raw_hint = ("; raw scans take --raw, when the dataset's plugin implements encode_raw "
                "(`foundation plugins` lists what raw input each takes)")
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{input}: dtype {getattr(arr, 'dtype', type(arr).__name__)} is not floating point; "
                        f"expected a float16/32/64 array (N, {expected[0]}, {expected[1]}){raw_hint}")
    if arr.ndim != 3 or tuple(arr.shape[1:]) != expected or arr.shape[0] == 0:
        raise DataError(f"{input}: array has shape {arr.shape}, expected (N, {expected[0]}, {expected[1]}) "
                        f"(samples, ROI tokens, token dim) for dataset {dataset!r}{raw_hint}")
    return _token_chunks(arr, input, dataset, gid, batch_size=batch_size)


def _token_chunks(arr: np.ndarray, input: Path, dataset: str, gid: str, *,
                  batch_size: int) -> tuple[int, Iterator[_Chunk]]:
    """Chunks of tokens ``arr`` ``(N, n_tokens, token_dim)`` of subject ``gid`` (read from ``input``)."""

    def chunks() -> Iterator[_Chunk]:
        for start in range(0, arr.shape[0], batch_size):
            x = np.asarray(arr[start : start + batch_size], dtype=np.float32)  # (B, T, D)
            _check_finite(x, input=input, first=start)
            n = len(x)
            yield _Chunk(dataset, _as_model_input(x), [gid] * n, list(range(start, start + n)))

    return int(arr.shape[0]), chunks()


# --------------------------------------------------------------------------- NIfTI volumes
def run_shard_index(run_dir: Path, dataset: str, *, needed_for: str | None = None,
                    contents: str = "", instead: str = "") -> ShardIndex:
    """The shard index of ``dataset`` that the run was trained on (its masks, its tars).

    Looked up in ``metrics.json`` (``shards``) first, then where the run's ``config.yaml`` puts it; tars
    are read from the recipe's ``shards.url`` when it has one.  When neither is on this machine, the
    :class:`ShardError` says what needed them (``needed_for``, a clause ending before "the run's
    shards"), what in them (``contents``) and any other way out (``instead``).
    """
    candidates: list[Path] = []
    notes: list[str] = []
    url = None
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            recorded = json.loads(metrics.read_text()).get("shards", {}).get(dataset)
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded:
            candidates.append(Path(recorded))
    config = run_dir / "config.yaml"
    if config.is_file():
        try:
            from foundation.data.shards import plan
            from foundation.core.recipe import load_recipe

            recipe = load_recipe(config, [f"run.dir={run_dir}"])
            url = recipe.shards.url or None
            candidates += [b.directory for b in plan(recipe) if b.config.id == dataset]
        except FoundationError as exc:
            log.warning("%s: config.yaml does not resolve to a shard directory (%s)", run_dir, exc)
            notes.append(f"its config.yaml does not resolve to a shard directory ({exc})")
    else:
        notes.append(f"{config} is missing")
    for directory in dict.fromkeys(candidates):
        if (directory / INDEX_NAME).is_file():
            return read_index(directory, check_files=False, url=url)
    where = " or ".join(str(d / INDEX_NAME) for d in dict.fromkeys(candidates)) or f"<shards.root>/{dataset}-<hash>/"
    detail = f" ({'; '.join(notes)})" if notes else ""
    needed_for = needed_for or f"dataset {dataset!r} is read from"
    raise ShardError(f"{needed_for} the run's shards, {where}{contents}, which is not on this machine{detail}; "
                     f"copy that shard directory here, rebuild it with `foundation shard {config}`{instead}")


#: largest difference (mm, per affine entry) between a NIfTI image's affine and the recorded one
AFFINE_TOLERANCE = 1e-3


def _check_affine(img, index, subject: str, *, input: Path) -> None:
    """Refuse a NIfTI image whose voxel-to-world affine is not the one the subject's shards were built with
    (``index.json["affines"]``): a flipped or shifted image has the right shape and would decode silently.
    Shards without a recorded affine (built before it was recorded, or from a plugin that reads no NIfTI,
    such as the synthetic world's) allow only the shape check, and a note says so."""
    recorded = (index.data.get("affines") or {}).get(subject)
    if recorded is None:
        log.warning("%s: %s records no affine for subject %r (built before affines were recorded, or by a "
                    "plugin that reads no NIfTI): only the image's shape is checked, not its orientation",
                    input, index.root / INDEX_NAME, subject)
        return
    want, got = np.asarray(recorded, dtype=np.float64), np.asarray(img.affine, dtype=np.float64)
    if got.shape != (4, 4) or not np.allclose(got, want, rtol=0, atol=AFFINE_TOLERANCE):
        def show(a: np.ndarray) -> str:
            return "[" + ", ".join("[" + ", ".join(f"{v:.6g}" for v in row) + "]" for row in np.atleast_2d(a)) + "]"

        raise DataError(f"{input}: its affine {show(got)} differs from the one recorded for subject {subject!r} "
                        f"when the shards were built, {show(want)} ({index.root / INDEX_NAME}; tolerance "
                        f"{AFFINE_TOLERANCE} per entry): the image is flipped, shifted or in another space; "
                        f"resample it onto the dataset's grid first")


def _nifti_chunks(model, run_dir: Path, input: Path, dataset: str, gid: str, *,
                  batch_size: int) -> tuple[int, Iterator[_Chunk]]:
    """Chunks of a NIfTI image ``(X, Y, Z, N)`` of one subject of a volume dataset (in-mask voxels)."""
    import nibabel as nib

    from foundation.data.voxels import VoxelIndexBank

    info = model.infos[dataset]
    if info.kind != "volume":
        raise DataError(f"{input}: dataset {dataset!r} is an ROI dataset; give its scans as a .npy array "
                        f"(N, {', '.join(map(str, info.token_shape or ()))}) or as shards")
    try:
        img = nib.load(str(input), keep_file_open=True)  # one gzip stream read once, chunk after chunk
    except Exception as exc:
        raise DataError(f"{input}: not a readable NIfTI image ({type(exc).__name__}: {exc})") from exc
    shape = tuple(int(v) for v in img.shape)
    grid = tuple(info.grid)  # type: ignore[arg-type]
    if len(shape) not in (3, 4) or shape[:3] != grid or (len(shape) == 4 and shape[3] == 0):
        raise DataError(f"{input}: image has shape {shape}, expected (X, Y, Z, N) volumes on the grid {grid} "
                        f"of dataset {dataset!r}")
    n = shape[3] if len(shape) == 4 else 1
    index = run_shard_index(
        run_dir, dataset, contents=" (with its masks/<subject>.npy)", instead=", or predict from shard tars instead",
        needed_for=f"dataset {dataset!r} is a volume dataset: placing NIfTI voxels needs the subject's brain mask from")
    _check_compatible(info, index, dataset)
    bare = gid.split("/", 1)[1]
    if bare not in index.data.get("masks", {}):
        raise ShardError(f"{index.root / INDEX_NAME}: no brain mask for subject {bare!r}; it has masks for "
                         f"{sorted(index.data.get('masks', {}))}")
    _check_affine(img, index, bare, input=input)
    bank = VoxelIndexBank(index, [bare])
    flat = index.voxel_positions(bare)  # C-order grid positions, as the shards store voxels

    def chunks() -> Iterator[_Chunk]:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            try:
                block = img.dataobj[..., start:stop] if len(shape) == 4 else img.dataobj[...][..., None]
                block = np.asarray(block, dtype=np.float32)  # (X, Y, Z, B), scaled by the header
            except Exception as exc:
                raise DataError(f"{input}: reading volumes {start}..{stop - 1} failed (truncated or corrupt "
                                f"file?): {type(exc).__name__}: {exc}") from exc
            voxels = block.reshape(-1, stop - start)[flat].T  # (B, V_s)
            _check_finite(voxels, input=input, first=start)
            fmri = torch.zeros(stop - start, bank.v_max)  # (B, V_max), zero-padded like a shard batch
            fmri[:, : voxels.shape[1]] = _as_model_input(voxels)
            yield _Chunk(dataset, fmri, [gid] * (stop - start), list(range(start, stop)),
                         bank([f"{index.dataset}/{bare}"] * (stop - start)))

    return n, chunks()

