"""No pickle from data or checkpoints: a malicious pickle in every place a file is read is refused.

Each payload would create a marker directory when unpickled (``os.mkdir``); every case asserts the
refusal (error type and the file named) *and* that the marker does not exist, i.e. no code ran.  The
only pickle foundation ever loads is the HCP segments file a user names as ``trust_pickle_segments``.
A source scan keeps unsafe loaders (``pickle.load``, ``yaml.load``, ``eval``/``exec``,
``allow_pickle=True``, ``torch.load`` without ``weights_only=True``) out of the code.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from foundation.core.errors import CheckpointError, DataError, PluginError, RecipeError, ShardError
from tests.data.conftest import rewrite_tar, tar_keys

from .conftest import expect, npy_pickle_bytes, pickle_bytes, reseal, tiny_run_recipe, torch_pickle, unseal_index

REPO = Path(__file__).resolve().parents[2]




@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "CODE-RAN"
    yield path
    assert not path.exists(), "a pickle was unpickled: its code ran"


@pytest.fixture
def run(trained, tmp_path):
    from foundation.engine.trainer import Trainer

    copy = tmp_path / "run"
    shutil.copytree(trained / "run", copy)
    return copy, lambda: Trainer(tiny_run_recipe(trained, run=copy), progress=False)


# --------------------------------------------------------------------------- checkpoints (resume)


@pytest.mark.parametrize("member", ["optimizer.bin", "scheduler.bin"])
def test_pickle_in_a_checkpoint_state_file(run, marker, request, member):
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    torch_pickle(ckpt / member, marker)
    reseal(ckpt)  # an attacker who rewrites the manifest too meets the safe loader
    expect(f"malicious pickle as checkpoint {member}", CheckpointError, trainer().resume, f"cannot restore {ckpt}",
           "Weights only load failed", request=request)


def test_pickle_as_checkpoint_rng_state(run, marker, request):
    """Accelerate reads the RNG file with weights_only=True but ignores a failure silently (and would resume
    with the wrong random state): foundation checks it first and refuses the checkpoint."""
    copy, trainer = run
    rng = copy / "checkpoints" / "step-00000004" / "random_states_0.pkl"
    torch_pickle(rng, marker, wrap=lambda p: {"random_state": p, "numpy_random_seed": 0, "torch_manual_seed": 0})
    reseal(rng.parent)
    expect("malicious pickle as checkpoint RNG state (random_states_0.pkl)", CheckpointError, trainer().resume, rng,
           "not a plain RNG state file", request=request)


def test_pickle_as_checkpoint_weights(run, marker, request):
    copy, trainer = run
    ckpt = copy / "checkpoints" / "step-00000004"
    (ckpt / "model.safetensors").write_bytes(pickle_bytes(marker))
    reseal(ckpt)
    expect("malicious pickle as checkpoint model.safetensors", CheckpointError, trainer().resume,
           f"cannot restore {ckpt}", request=request)


def test_rerun_of_a_tampered_run_refuses_to_resume(run, marker, trained, request):
    """The same through `foundation train`: the command stops, nothing of the run is rewritten."""
    from foundation.workflows.train import train

    copy, _ = run
    torch_pickle(copy / "checkpoints" / "step-00000004" / "random_states_0.pkl", marker)
    reseal(copy / "checkpoints" / "step-00000004")
    before = (copy / "metrics.json").read_bytes()
    expect("malicious RNG pickle met by a rerun of `foundation train`", CheckpointError,
           lambda: train(tiny_run_recipe(trained, run=copy), progress=False), "random_states_0.pkl", request=request)
    assert (copy / "metrics.json").read_bytes() == before


# --------------------------------------------------------------------------- saved models, predict inputs


def test_pickle_as_saved_model_weights(run, marker, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    weights = copy / "best" / "model.safetensors"
    weights.write_bytes(pickle_bytes(marker))
    reseal(weights.parent)
    scans = tmp_path / "x.npy"
    np.save(scans, np.zeros((1, 3, 8), np.float32))
    expect("malicious pickle as best/model.safetensors", CheckpointError,
           lambda: predict_run(copy, scans, subject="sub-01", progress=False), weights, request=request)


def test_pickle_as_predict_input(run, marker, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    scans = tmp_path / "scans.npy"
    scans.write_bytes(npy_pickle_bytes(marker))
    expect("malicious pickle as a predict .npy input", DataError,
           lambda: predict_run(copy, scans, subject="sub-01", progress=False), scans, "not a plain .npy array",
           request=request)


# --------------------------------------------------------------------------- shards, masks, features, PCA bases


def test_pickle_in_a_shard_member(run, trained, marker, tmp_path, request):
    from foundation.workflows.predict import predict_run

    copy, _ = run
    shards = tmp_path / "shards"
    shutil.copytree(trained / "shards", shards)
    tar = next(shards.glob("synthetic-*")) / "test" / "sub-01-0000.tar"
    key = tar_keys(tar)[0]
    rewrite_tar(tar, lambda name, payload: npy_pickle_bytes(marker) if name == f"{key}.fmri.npy" else payload)
    unseal_index(tar.parent.parent)  # past the checksum: the member loader refuses the pickle
    expect("malicious pickle as a shard member", ShardError,
           lambda: predict_run(copy, tar, subject="sub-01", progress=False), tar, f"sample {key} member fmri.npy",
           "not a plain .npy array", request=request)


def test_pickle_as_a_subject_mask(trained, marker, tmp_path, request):
    from foundation.data.index import read_index

    shards = tmp_path / "shards"
    shutil.copytree(trained / "shards", shards)
    index = read_index(next(shards.glob("synthetic-*")))
    mask = index.root / "masks" / "sub-01.npy"
    mask.parent.mkdir()
    mask.write_bytes(npy_pickle_bytes(marker))
    index.data["masks"] = {"sub-01": "masks/sub-01.npy"}
    expect("malicious pickle as a subject mask (masks/*.npy)", ShardError, lambda: index.mask("sub-01"), mask,
           request=request)


def test_pickle_as_a_feature_cache_chunk(marker, tmp_path, request):
    from foundation.data.features import FeatureCache

    cache = tmp_path / "cache"
    cache.mkdir()
    chunk = cache / "chunk-00000.npz"
    import zipfile

    with zipfile.ZipFile(chunk, "w") as z:  # an .npz whose "low" array is an object array that runs code
        z.writestr("ids.npy", _npy(np.array(["a"])))
        z.writestr("low.npy", npy_pickle_bytes(marker))
        z.writestr("high.npy", _npy(np.zeros((1, 2), np.float16)))
    expect("malicious pickle in a guidance feature cache chunk", DataError, lambda: FeatureCache(cache), chunk,
           request=request)


def test_pickle_as_nsd_pca_bases(marker, tmp_path, request):
    import zipfile

    from foundation_nsd.pca import load_bases

    path = tmp_path / "subj01.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("format.npy", npy_pickle_bytes(marker))
    expect("malicious pickle as NSD PCA bases (nsd_pca/*.npz)", DataError, lambda: load_bases(path), path,
           request=request)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


# --------------------------------------------------------------------------- guidance weights, HCP segments, YAML


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
def test_pickle_as_guidance_weights(marker, tmp_path, request, suffix):
    from foundation_vision.weights import load_state_dict

    path = tmp_path / f"weights{suffix}"
    torch_pickle(path, marker)
    expect(f"malicious pickle as guidance weights ({suffix})", PluginError,
           lambda: load_state_dict(path, plugin="vit"), path, "cannot read weight file", request=request)


def test_pickle_as_hcp_segments_unless_trusted(marker, tmp_path, request):
    from foundation_hcp.segments import load_segments

    path = tmp_path / "clip_times_24.npy"
    path.write_bytes(npy_pickle_bytes(marker))
    expect("pickle as HCP clip segments (not named trust_pickle_segments)", DataError,
           lambda: load_segments(path, trusted=False), path, "trust_pickle_segments", request=request)


def test_python_tag_in_a_run_directory_config(run, marker, trained, request):
    from foundation.workflows.train import train

    copy, _ = run
    config = copy / "config.yaml"
    config.write_text(f"name: !!python/object/apply:os.mkdir ['{marker}']\n")
    expect("Python object tag in a run directory's config.yaml", RecipeError,
           lambda: train(tiny_run_recipe(trained, run=copy), progress=False), config, "unreadable", request=request)


# --------------------------------------------------------------------------- the code itself

#: (pattern, files where it is allowed and why)
UNSAFE = [
    (r"\bpickle\.loads?\(|\bcPickle\b|\bdill\b|\bjoblib\.load\(|\bshelve\.", {}),
    (r"\byaml\.(load|unsafe_load|full_load)\(|Loader=yaml\.(Full|Unsafe)?Loader", {}),
    (r"(?<![\w.])(eval|exec)\(", {}),
    (r"allow_pickle\s*=\s*True", {"plugins/foundation_hcp/segments.py": "the trusted segments file, named by the user"}),
    (r"weights_only\s*=\s*False", {}),
]


def _sources() -> list[Path]:
    return sorted(p for d in ("foundation", "plugins") for p in (REPO / d).rglob("*.py"))


def _code_only(path: Path) -> str:
    """The source of ``path`` with every string literal and comment blanked out (line and column kept)."""
    import tokenize

    text = path.read_text()
    lines = [list(line) for line in text.splitlines(keepends=True)]
    with open(path, "rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type not in (tokenize.STRING, tokenize.COMMENT):
                continue
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                row = lines[r - 1]
                for c in range(c0 if r == r0 else 0, c1 if r == r1 else len(row)):
                    if row[c] != "\n":
                        row[c] = " "
    return "".join("".join(row) for row in lines)


def _calls(text: str, name: str) -> list[str]:
    """The source text of every call ``name(...)`` (balanced parentheses)."""
    out = []
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 0, m.end() - 1
        while i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            if depth == 0:
                break
            i += 1
        out.append(text[m.start(): i + 1])
    return out


def test_no_unsafe_loader_in_the_code():
    found = []
    for path in _sources():
        rel = str(path.relative_to(REPO))
        code = _code_only(path)  # docstrings and comments may mention them
        for pattern, allowed in UNSAFE:
            for m in re.finditer(pattern, code):
                if rel not in allowed:
                    found.append(f"{rel}: {m.group(0)}")
        for call in _calls(code, "torch.load"):
            if "weights_only=True" not in call:
                found.append(f"{rel}: {call}")
    assert not found, found


def test_every_archive_written_by_foundation_is_pickle_free(trained):
    """Shard members and masks load with allow_pickle=False; the trained model is safetensors + JSON."""
    directory = next((trained / "shards").glob("synthetic-*"))
    with tarfile.open(next(directory.glob("train/*.tar"))) as tar:
        for member in tar:
            if member.name.endswith(".npy"):
                np.load(io.BytesIO(tar.extractfile(member).read()), allow_pickle=False)
    assert sorted(p.name for p in (trained / "run" / "best").iterdir()) == ["manifest.json", "model.json",
                                                                            "model.safetensors"]
