"""ViT guidance (timm), the ViT row of Table E6.

- **low**: the output of the first transformer block (``blocks[0]``), reduced by ``low_pool``
  (default ``mean``: mean over the patch tokens, prefix tokens excluded), L2-normalised.
- **high**: the final pre-logits embedding (``forward_head(forward_features(x), pre_logits=True)``:
  the class token after the final norm for ``vit_base_patch16_224``), L2-normalised (clipped first
  only if ``clip_value`` is set).
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.core.api import GuidanceFeatures, Stimulus
from foundation.core.errors import PluginError, RecipeError
from foundation_vision.common import NetworkGuidance, check_pool, clip_and_normalise, image_batch, reduce_tokens
from foundation_vision.weights import (
    Candidate,
    WeightsPlan,
    hf_cache_file,
    load_into,
    load_state_dict,
    resolve,
    torch_hub_checkpoint,
)

CHECKPOINT_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth")


@dataclasses.dataclass(frozen=True)
class VitOptions:
    """Options of the ``vit`` guidance plugin.

    Attributes:
        model: timm model name, optionally with a pretrained tag (``vit_base_patch16_224``,
            ``vit_base_patch16_224.augreg2_in21k_ft_in1k``).
        checkpoint: a local weight file (or a directory holding ``model.safetensors`` /
            ``pytorch_model.bin``); null: the timm weights of ``model`` in the local Hugging Face hub
            cache or torch hub cache; ``random``: random init on purpose (needs ``allow_random_weights``).
        model_kwargs: extra keyword arguments of ``timm.create_model`` (e.g. a tiny ``depth``,
            ``embed_dim``, ``img_size`` for tests).
        cache_dir: an extra Hugging Face hub cache directory to look in.
        seed: seeds the random initialisation (random weights only).
        low_pool: ``mean`` (patch tokens), ``cls`` (class token) or ``gridK`` (K×K spatial means).
        clip_value: clip the high feature to ±clip_value before L2 normalisation (null: no clipping).
        batch_size: stimuli per forward pass (0: the plugin default, 64).
    """

    model: str = "vit_base_patch16_224"
    checkpoint: str | None = None
    model_kwargs: dict[str, Any] | None = None
    cache_dir: str | None = None
    seed: int = 0
    low_pool: str = "mean"
    clip_value: float | None = None
    batch_size: int = 0


class VitGuidance(NetworkGuidance):
    """A timm Vision Transformer: low = first block (mean of patch tokens), high = pre-logits embedding."""

    name = "vit"
    Options = VitOptions
    needs = ("image",)
    description = "timm ViT (default ViT-B/16): low = first block (mean of patch tokens), high = pre-logits embedding"
    batch_size = 64
    libraries = ("torch", "timm")

    def __init__(self, options: VitOptions, *, device: str = "cpu", allow_random_weights: bool = False) -> None:
        super().__init__(options, device=device, allow_random_weights=allow_random_weights)
        check_pool(options.low_pool, plugin=self.name)

    @property
    def feature_doc(self) -> dict[str, str]:  # type: ignore[override]
        clip = f"clipped to ±{self.options.clip_value}, " if self.options.clip_value is not None else ""
        return {"low": f"blocks[0] output, {self.options.low_pool} over patch tokens, L2-normalised",
                "high": f"forward_head(pre_logits=True) embedding, {clip}L2-normalised"}

    def _pretrained_cfg(self) -> Any:
        from timm.models import get_pretrained_cfg

        try:
            return get_pretrained_cfg(self.options.model)
        except Exception:  # noqa: BLE001 - an unknown name: create_model says so, with timm's message
            return None

    def plan_weights(self) -> WeightsPlan:
        o, where = self.options, f"guidance.options.{self.name}.checkpoint"
        if o.checkpoint is not None:
            path = Path(o.checkpoint).expanduser()
            return resolve([Candidate(path, where)], plugin=self.name, file=str(path), explicit=o.checkpoint,
                           names=CHECKPOINT_NAMES, allow_random=self.allow_random_weights,
                           how=f"pass {where}=/path/to/model.safetensors (a file that exists on this machine)")
        cfg = self._pretrained_cfg()
        candidates, sources = [], []
        if cfg is not None and cfg.hf_hub_id:
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for name in names:
                for cache in (o.cache_dir, None) if o.cache_dir else (None,):
                    found, pattern = hf_cache_file(cfg.hf_hub_id, name, cache)
                    candidates.append(Candidate(found or Path(pattern), "Hugging Face hub cache"))
            sources.append(f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{names[0]}")
        if cfg is not None and cfg.url and cfg.url.endswith((".pth", ".pt", ".bin", ".safetensors")):
            candidates.append(Candidate(torch_hub_checkpoint(cfg.url.rsplit("/", 1)[-1]), "torch hub cache"))
            sources.append(cfg.url)
        tag = f"{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else o.model
        how = (f"on a machine with internet, download {' or '.join(sources) or 'the timm weights of ' + o.model} "
               f"(or run `python -c \"import timm; timm.create_model('{tag}', pretrained=True)\"` and copy "
               f"~/.cache/huggingface/hub here), then pass {where}=/path/to/model.safetensors")
        return resolve(candidates, plugin=self.name, file=f"timm {tag} weights (model.safetensors)", how=how,
                       allow_random=self.allow_random_weights)

    def describe(self) -> dict[str, Any]:
        o = self.options
        return {"network": f"timm {o.model}", "model_kwargs": dict(o.model_kwargs or {}), "low_pool": o.low_pool,
                "clip_value": o.clip_value}

    def build(self) -> Any:
        import timm
        from timm.data import create_transform, resolve_data_config

        o = self.options
        try:
            model = timm.create_model(o.model, pretrained=False, num_classes=0, **(o.model_kwargs or {}))
        except RuntimeError as exc:
            raise RecipeError(f"guidance.options.{self.name}.model: timm cannot create {o.model!r}: {exc}") from exc
        if not (hasattr(model, "blocks") and hasattr(getattr(model, "patch_embed", None), "grid_size")):
            raise PluginError(f"guidance plugin {self.name!r}: {o.model} is not a timm Vision Transformer "
                              f"(needs .blocks and .patch_embed.grid_size)")
        plan = self.plan
        if plan.path is not None:
            state = load_state_dict(plan.path, plugin=self.name)
            filt = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
            if filt is not None:  # timm's own conversions (e.g. position-embedding resizing)
                state = filt(state, model)
            classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier", "head")
            classifiers = classifier if isinstance(classifier, (list, tuple)) else [classifier]
            load_into(model, state, plugin=self.name, path=plan.path, ignore=[f"{c}." for c in classifiers])
        model = model.eval().to(self.torch_device())
        self._low_tokens = None

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self._low_tokens = output

        model.blocks[0].register_forward_hook(keep)
        self._grid = tuple(model.patch_embed.grid_size)
        img = getattr(model.patch_embed, "img_size", None)
        data = resolve_data_config({"input_size": (3, *img)} if img else {}, model=model)
        self._transform = create_transform(**data, is_training=False)
        return model

    def encode_batch(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        model = self._net
        x = image_batch(stimuli, self._transform, self.name).to(self.torch_device())
        high = model.forward_head(model.forward_features(x), pre_logits=True).float()
        low = reduce_tokens(self._low_tokens.float(), self._grid, self.options.low_pool)
        self._low_tokens = None
        return GuidanceFeatures(low=clip_and_normalise(self.to_numpy(low), None),
                                high=clip_and_normalise(self.to_numpy(high), self.options.clip_value))
