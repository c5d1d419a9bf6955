"""Finding and loading a guidance network's weights: local files only, one code path.

Nothing here downloads.  A plugin lists the places a weight file may be (an explicit path first,
then the local caches the libraries themselves would have filled: the Hugging Face hub cache,
open_clip's URL cache ``~/.cache/clip``, torch hub's ``checkpoints/``), :func:`resolve` picks the
first that exists, and :func:`load_state_dict` reads it safely (safetensors, or
``torch.load(weights_only=True)``; an OpenAI CLIP TorchScript archive through ``torch.jit.load``,
which runs no pickled Python).  When nothing is found the error says which file, every place it
was looked for and how to get it; random initialisation happens only when the recipe allows it.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundation.core.errors import PluginError, WeightsMissingError

if TYPE_CHECKING:  # pragma: no cover
    import torch

#: the value of a weights option that asks for a randomly initialised network on purpose
RANDOM = "random"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One place a weight file may be: ``path`` (a file, or a directory holding one of ``names``)."""

    path: Path
    where: str  # for humans: "guidance.options.clip.pretrained", "Hugging Face hub cache", ...


@dataclasses.dataclass(frozen=True)
class WeightsPlan:
    """What a plugin will load: a file, or (``path is None``) a random initialisation."""

    path: Path | None
    random: bool
    looked: tuple[str, ...] = ()
    reason: str = ""

    def provenance(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"random_weights": self.random, "weights": str(self.path) if self.path else None}
        if self.path is not None and self.path.is_file():
            facts["weights_bytes"] = self.path.stat().st_size
        if self.random:
            facts["random_reason"] = self.reason
        return facts


def hf_cache_file(repo_id: str, filename: str, cache_dir: str | os.PathLike | None = None) -> tuple[Path | None, str]:
    """The locally cached ``filename`` of hub repo ``repo_id`` (never a network call) and where it was looked for."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip and timm depend on it
        return None, f"Hugging Face hub cache (huggingface_hub not installed): {repo_id}/{filename}"
    root = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    pattern = root / f"models--{repo_id.replace('/', '--')}" / "snapshots" / "*" / filename
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    except Exception:  # noqa: BLE001 - a malformed repo id etc.: not cached
        found = None
    return (Path(found) if isinstance(found, str) else None), str(pattern)


def torch_hub_checkpoint(filename: str) -> Path:
    """``torch.hub.get_dir()/checkpoints/filename`` (where torchvision/timm URL downloads land)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def resolve(
    candidates: Sequence[Candidate],
    *,
    plugin: str,
    file: str,
    how: str,
    allow_random: bool,
    explicit: str | None = None,
    names: Sequence[str] = (),
) -> WeightsPlan:
    """Pick the first existing candidate, else random init (if allowed), else raise.

    Args:
        candidates: places to look, in order.
        plugin: plugin name (for messages).
        file: the weight file's name/description (for messages), e.g. ``open_clip_pytorch_model.bin``.
        how: how to get the file on a machine with internet, and which option to set.
        allow_random: the recipe's ``guidance.allow_random_weights``.
        explicit: the user's explicit path option, if any: when it names a missing file this is an
            error even with ``allow_random`` (the user asked for that file), and ``"random"`` asks
            for random initialisation on purpose (still only with ``allow_random``).
        names: file names to look for when a candidate is a directory.

    Raises:
        WeightsMissingError: no candidate exists and random weights are not allowed, or the
            explicitly named file does not exist.
    """
    if explicit == RANDOM:
        if not allow_random:
            raise PluginError(f"guidance plugin {plugin!r}: weights {RANDOM!r} asks for a randomly initialised "
                              f"network, which needs guidance.allow_random_weights: true in the recipe")
        return WeightsPlan(None, True, (), f"{RANDOM!r} requested")
    looked = []
    for cand in candidates:
        path = Path(cand.path).expanduser()
        if path.is_dir():
            for name in names:
                if (path / name).is_file():
                    return WeightsPlan(path / name, False, tuple(looked))
            looked.append(f"{cand.where}: {path}/{{{','.join(names)}}}")
            continue
        if path.is_file():
            return WeightsPlan(path, False, tuple(looked))
        looked.append(f"{cand.where}: {path}")
    if explicit is None and allow_random:
        return WeightsPlan(None, True, tuple(looked), "no weight file found and guidance.allow_random_weights is true")
    where = "\n".join(f"  - {x}" for x in looked) or "  - (nowhere: no location was given)"
    tail = ("" if explicit is not None else
            "\n(For tests or benchmarks only: guidance.allow_random_weights: true runs a randomly initialised "
            "network; the run is then flagged random_weights in index.json and metrics.json.)")
    raise WeightsMissingError(
        f"guidance plugin {plugin!r}: weight file {file} not found. Looked for it in:\n{where}\n"
        f"Nothing is downloaded at run time. To get it: {how}{tail}")


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist()[:200])
    except (zipfile.BadZipFile, OSError):
        return False


def load_state_dict(path: str | os.PathLike, *, plugin: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` state dict, safely.

    ``.safetensors`` through safetensors; anything else through ``torch.load(weights_only=True)``
    (a TorchScript archive, as OpenAI's CLIP ``.pt`` files are, through ``torch.jit.load``).
    Wrappers ``{"state_dict": …}`` / ``{"model": …}`` / ``{"module": …}`` and a ``module.``
    prefix (DataParallel) are removed.

    Raises:
        WeightsMissingError: the file does not exist.
        PluginError: the file is unreadable or holds no state dict (the message names it).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsMissingError(f"guidance plugin {plugin!r}: weight file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        elif _is_torchscript(path):
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PluginError(f"guidance plugin {plugin!r}: cannot read weight file {path} "
                          f"({type(exc).__name__}: {exc}); it should be a state dict saved with torch.save or "
                          f"safetensors") from exc
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise PluginError(f"guidance plugin {plugin!r}: weight file {path} holds no state dict of tensors "
                          f"(got {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], *, plugin: str, path: Path,
              ignore: Sequence[str] = ()) -> None:
    """``model.load_state_dict(state, strict=True)`` with a clear error; keys starting with any of
    ``ignore`` (e.g. a classifier head that is not used) are dropped from both sides' check."""
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))} if ignore else state
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.startswith(tuple(ignore))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def few(xs: list[str]) -> str:
            return ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")

        parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(unexpected)}" if unexpected else "",
                 f"shape mismatch {few(shapes)}" if shapes else ""]
        raise PluginError(f"guidance plugin {plugin!r}: weight file {path} does not fit the configured network "
                          f"({'; '.join(p for p in parts if p)}); check the model name/config options")
    model.load_state_dict(state, strict=False)
