"""CLIP guidance (open_clip): the paper's own feature extractor (Section 2.2, Appendix A, Table E6).

- **low**: the output of the image encoder's first transformer block
  (``visual.transformer.resblocks[0]``), reduced to one vector by ``low_pool`` (default ``mean``:
  the mean over the patch tokens, CLS excluded), then L2-normalised (not clipped).
- **high** (``clip``): the mean of the final image embedding (``encode_image``, after the
  projection) and the final text embedding of the stimulus' text (``encode_text``), each first
  clipped to ±``clip_value`` (1.5) and L2-normalised.  The mean is *not* re-normalised (the paper
  takes the plain average; its norm is ≤ 1 and cosine RSMs do not depend on it).
  ``clip-image`` / ``clip-text``: only the image / only the text half (unit norm).
- **text**: captions in ``Stimulus.extras["captions"]`` (NSD: five per image) → keep those whose
  CLIP cosine similarity to the image is at least half the best one, pick one with an RNG seeded by
  (``seed``, stimulus id) (Appendix A, after Lin et al. 2022); otherwise ``Stimulus.text``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.core.api import GuidanceFeatures, Stimulus
from foundation.core.errors import DataError, PluginError, RecipeError
from foundation_vision.common import (
    PAPER_CLIP,
    NetworkGuidance,
    check_pool,
    clip_and_normalise,
    image_batch,
    reduce_tokens,
    stable_seed,
)
from foundation_vision.weights import RANDOM, Candidate, WeightsPlan, hf_cache_file, load_into, load_state_dict, resolve

#: open_clip's file names for a full CLIP checkpoint, in its own order of preference
CHECKPOINT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth", "model.safetensors",
                    "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """Options of the ``clip``, ``clip-image`` and ``clip-text`` guidance plugins.

    Attributes:
        model: open_clip model name (``open_clip.list_models()``), e.g. ``ViT-B-32``, ``ViT-L-14``.
        pretrained: an open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``…) resolved only from
            the local caches (Hugging Face hub cache, ``~/.cache/clip``, ``cache_dir``), a local
            checkpoint file or a directory holding one, ``random`` (random init on purpose; needs
            ``allow_random_weights``) or null (no weights: random init if allowed, else an error).
        model_config: an open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``…) used
            instead of the named model's (tests use a tiny one); ``model`` then only names the tag's model.
        cache_dir: an extra directory where open_clip downloads were cached (its ``cache_dir``).
        seed: seeds the caption choice and, with random weights, the initialisation.
        low_pool: ``mean`` (patch tokens), ``cls`` (the class token) or ``gridK`` (K×K spatial means).
        clip_value: the clip threshold before L2 normalisation of the high features (Appendix A: 1.5);
            null to skip clipping.
        batch_size: stimuli per forward pass (0: the plugin default, 64).
    """

    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    model_config: dict[str, Any] | None = None
    cache_dir: str | None = None
    seed: int = 0
    low_pool: str = "mean"
    clip_value: float | None = PAPER_CLIP
    batch_size: int = 0


def select_caption(similarities: Sequence[float], *, seed: int, stimulus_id: str) -> int:
    """Index of the caption to use (Appendix A).

    Keeps the captions whose similarity to the image is at least half the maximum and picks one of
    them with an RNG seeded by ``(seed, stimulus_id)``, so the choice is the same in every run and
    process and does not depend on the batch.  When the best similarity is not positive (possible
    only with an untrained network), "half the maximum" would exceed the maximum: the best caption
    is kept alone.
    """
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim != 1 or sims.size == 0:
        raise ValueError(f"select_caption needs a non-empty 1-D array of similarities, got shape {sims.shape}")
    best = float(sims.max())
    keep = np.flatnonzero(sims >= best / 2) if best > 0 else np.array([int(sims.argmax())])
    rng = np.random.default_rng(stable_seed("caption", seed, stimulus_id))
    return int(keep[int(rng.integers(len(keep)))])


def captions_of(stimulus: Stimulus) -> list[str]:
    """The non-empty captions of an NSD-style stimulus (``extras["captions"]``), in order."""
    caps = stimulus.extras.get("captions") if stimulus.extras else None
    if caps is None:
        return []
    if isinstance(caps, str):
        caps = [caps]
    return [str(c) for c in np.asarray(caps, dtype=object).ravel() if str(c).strip()]


class ClipGuidance(NetworkGuidance):
    """CLIP (open_clip): low = first image-transformer block, high = mean of image and text embeddings."""

    name = "clip"
    Options = ClipOptions
    needs = ("image", "text")
    description = ("CLIP (open_clip): low = image encoder's first block (mean of patch tokens), "
                   "high = mean of ±1.5-clipped, L2-normalised image and text embeddings")
    batch_size = 64
    libraries = ("torch", "open_clip_torch")
    init_key = "clip"  # clip, clip-image and clip-text run the same network
    #: which embeddings make the high feature
    high_from: tuple[str, ...] = ("image", "text")

    def __init__(self, options: ClipOptions, *, device: str = "cpu", allow_random_weights: bool = False) -> None:
        super().__init__(options, device=device, allow_random_weights=allow_random_weights)
        check_pool(options.low_pool, plugin=self.name)
        if options.clip_value is not None and options.clip_value <= 0:
            raise RecipeError(f"guidance.options.{self.name}.clip_value must be > 0 or null, got {options.clip_value}")
        self.last_texts: list[str | None] = []  # the text used for each stimulus of the last batch

    @property
    def feature_doc(self) -> dict[str, str]:  # type: ignore[override]
        pool = {"mean": "mean over patch tokens", "cls": "class token"}.get(self.options.low_pool,
                                                                           f"{self.options.low_pool} spatial means")
        clip = f"clipped to ±{self.options.clip_value} then " if self.options.clip_value is not None else ""
        halves = {"image": "encode_image (final image embedding)", "text": "encode_text (final text embedding)"}
        high = " and ".join(halves[h] for h in self.high_from)
        mean = ", then averaged (not re-normalised)" if len(self.high_from) > 1 else ""
        return {"low": f"visual.transformer.resblocks[0] output, {pool}, L2-normalised",
                "high": f"{high}, each {clip}L2-normalised{mean}"}

    # ---------------------------------------------------------------- configuration and weights
    def _tag_cfg(self) -> dict[str, Any]:
        import open_clip

        p = self.options.pretrained
        if not p or p == RANDOM:
            return {}
        return dict(open_clip.get_pretrained_cfg(self.options.model.replace("/", "-"), p) or {})

    def _model_cfg(self) -> dict[str, Any]:
        import open_clip

        if self.options.model_config is not None:
            cfg = copy.deepcopy(dict(self.options.model_config))
            if "vision_cfg" not in cfg or "embed_dim" not in cfg:
                raise RecipeError(f"guidance.options.{self.name}.model_config needs at least embed_dim, vision_cfg "
                                  f"and text_cfg (an open_clip model config)")
            return cfg
        cfg = open_clip.get_model_config(self.options.model.replace("/", "-"))
        if cfg is None:
            names = open_clip.list_models()
            close = difflib.get_close_matches(self.options.model, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise RecipeError(f"guidance.options.{self.name}.model: {self.options.model!r} is not an open_clip model"
                              f"{hint}; see open_clip.list_models()")
        return copy.deepcopy(cfg)

    def plan_weights(self) -> WeightsPlan:
        o, where = self.options, f"guidance.options.{self.name}.pretrained"
        if o.pretrained is None:
            return resolve([], plugin=self.name, file=f"(none: {where} is null)", allow_random=self.allow_random_weights,
                           how=f"set {where} to an open_clip tag cached here or to a local checkpoint file")
        if o.pretrained == RANDOM:
            return resolve([], plugin=self.name, file="", how="", allow_random=self.allow_random_weights,
                           explicit=RANDOM)
        tag = self._tag_cfg()
        if not tag:
            import open_clip

            path = Path(o.pretrained).expanduser()
            tags = open_clip.list_pretrained_tags_by_model(o.model.replace("/", "-"))
            how = (f"pass {where}=/path/to/open_clip_pytorch_model.bin (a file that exists on this machine)"
                   + (f", or one of the open_clip tags of {o.model}: {', '.join(tags)}" if tags else ""))
            return resolve([Candidate(path, where)], plugin=self.name, file=str(path), how=how,
                           allow_random=self.allow_random_weights, explicit=o.pretrained, names=CHECKPOINT_NAMES)
        candidates: list[Candidate] = []
        files: list[str] = []
        hub = tag.get("hf_hub", "")
        if hub:
            # open_clip's convention: "org/repo/" (default file name) or "org/repo/file.bin"
            repo, fname = (hub[:-1], "") if hub.endswith("/") else os.path.split(hub)
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            if fname.endswith((".bin", ".pth")):
                names.insert(0, fname[:-4] + ".safetensors")
            for name in names:
                for cache in (o.cache_dir, None) if o.cache_dir else (None,):
                    found, pattern = hf_cache_file(repo, name, cache)
                    candidates.append(Candidate(found or Path(pattern), "Hugging Face hub cache"))
            files.append(f"https://huggingface.co/{repo}/resolve/main/{names[-1]}")
        url = tag.get("url", "")
        if url:
            base = os.path.basename(url)
            for root in ([o.cache_dir] if o.cache_dir else []) + [os.path.expanduser("~/.cache/clip")]:
                candidates.append(Candidate(Path(root) / base, "open_clip URL cache"))
            files.append(url)
        file = f"{o.model} {o.pretrained!r} open_clip weights ({', '.join(sorted({c.path.name for c in candidates}))})"
        how = (f"on a machine with internet, download {' or '.join(files)} (or run `python -c \"import open_clip; "
               f"open_clip.create_model('{o.model}', pretrained='{o.pretrained}')\"` and copy the Hugging Face cache "
               f"~/.cache/huggingface/hub here), then pass {where}=/path/to/that/file")
        return resolve(candidates, plugin=self.name, file=file, how=how, allow_random=self.allow_random_weights)

    def describe(self) -> dict[str, Any]:
        o = self.options
        facts: dict[str, Any] = {"network": f"open_clip {o.model}" + (" (custom model_config)" if o.model_config else ""),
                                 "pretrained": o.pretrained, "low_pool": o.low_pool, "clip_value": o.clip_value,
                                 "caption_seed": o.seed}
        if o.model_config:
            facts["model_config"] = json.loads(json.dumps(o.model_config))
        return facts

    # ---------------------------------------------------------------- the network
    def build(self) -> Any:
        import open_clip
        from open_clip.model import CLIP, CustomTextCLIP, convert_to_custom_text_state_dict, resize_pos_embed
        from open_clip.transformer import VisionTransformer

        cfg, tag = self._model_cfg(), self._tag_cfg()
        if tag.get("quick_gelu") and not cfg.get("quick_gelu"):
            cfg["quick_gelu"] = True  # the weights were trained with QuickGELU (OpenAI's)
        vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if "timm_model_name" in vision:
            vision["timm_model_pretrained"] = False  # never let timm fetch tower weights
        if "hf_model_name" in text:
            text["hf_model_pretrained"] = False
        if "multimodal_cfg" in cfg:
            raise PluginError(f"guidance plugin {self.name!r}: CoCa models ({self.options.model}) are not supported")
        custom = cfg.pop("custom_text", False) or "hf_model_name" in text
        preprocess = cfg.pop("preprocess_cfg", {}) or {}
        model = (CustomTextCLIP if custom else CLIP)(**cfg)
        if not isinstance(model.visual, VisionTransformer):
            raise PluginError(f"guidance plugin {self.name!r}: {self.options.model} has a "
                              f"{type(model.visual).__name__} image tower; the low feature (first transformer "
                              f"block) needs an open_clip VisionTransformer (ViT-* models)")
        plan = self.plan
        if plan.path is not None:
            state = load_state_dict(plan.path, plugin=self.name)
            for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI TorchScript extras
                state.pop(key, None)
            if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
                state = convert_to_custom_text_state_dict(state)
            for key in ("logit_scale", "logit_bias"):
                own = getattr(model, key, None)
                if key in state and own is not None and state[key].ndim != own.ndim:
                    state[key] = state[key].reshape(own.shape)
            resize_pos_embed(state, model)
            load_into(model, state, plugin=self.name, path=plan.path)
        model = model.eval().to(self.torch_device())

        visual = model.visual
        self._low_tokens = None

        def keep(_module: Any, _inputs: Any, output: Any) -> None:
            self._low_tokens = output if visual.transformer.batch_first else output.transpose(0, 1)

        visual.transformer.resblocks[0].register_forward_hook(keep)
        self._grid = tuple(visual.grid_size)
        mean = tag.get("mean", preprocess.get("mean"))
        std = tag.get("std", preprocess.get("std"))
        self._transform = open_clip.image_transform(
            visual.image_size, is_train=False, mean=mean, std=std,
            resize_mode=tag.get("resize_mode", preprocess.get("resize_mode", "shortest")),
            interpolation=tag.get("interpolation", preprocess.get("interpolation", "bicubic")))
        self._tokenizer = self._make_tokenizer(cfg)
        self._pad_id = int(cfg.get("text_cfg", {}).get("pad_id", 0))
        return model

    def _make_tokenizer(self, cfg: dict[str, Any]) -> Any:
        import open_clip
        from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

        text = cfg.get("text_cfg", {})
        ctx = text.get("context_length", 77)
        if self.options.model_config is None and "hf_tokenizer_name" not in text:
            return open_clip.get_tokenizer(self.options.model.replace("/", "-"))
        if text.get("hf_tokenizer_name"):
            return HFTokenizer(text["hf_tokenizer_name"], context_length=ctx, **text.get("tokenizer_kwargs", {}))
        return SimpleTokenizer(context_length=ctx, **text.get("tokenizer_kwargs", {}))

    # ---------------------------------------------------------------- encoding
    def check_stimuli(self, stimuli: Sequence[Stimulus]) -> None:
        super().check_stimuli(stimuli)
        if "text" in self.high_from:
            for s in stimuli:
                if not captions_of(s) and not (s.text and s.text.strip()):
                    raise DataError(f"guidance plugin {self.name!r} needs a text (Stimulus.text or "
                                    f"extras['captions']), but stimulus {s.id!r} has none; use clip-image for "
                                    f"image-only stimuli")

    def _encode_texts(self, texts: list[str]) -> Any:
        """Final text embeddings ``(N, E)`` of ``texts`` (``encode_text``, computed on trimmed sequences).

        The native CLIP text tower is causal and pools at the end-of-text token, so the padding after
        the longest text of the batch cannot change any output: it is cut off (a 3-4x saving on
        captions of ~15-25 tokens padded to 77).  Other towers run ``encode_text`` as is.
        """
        from open_clip.transformer import text_global_pool
        from torch import nn

        model = self._net
        tokens = self._tokenizer(texts).to(self.torch_device())
        trimmable = (getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding")
                     and getattr(model, "text_pool_type", "") in ("argmax", "eos"))
        if not trimmable:
            return model.encode_text(tokens).float()
        used = (tokens != self._pad_id).any(dim=0).nonzero()
        length = int(used.max()) + 1 if len(used) else tokens.shape[1]
        tokens = tokens[:, :length]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
        x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
        if model.text_projection is not None:
            x = model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection
        return x.float()

    def _texts(self, stimuli: Sequence[Stimulus], image_emb: Any) -> tuple[list[str], Any]:
        """The text of each stimulus (caption rule of Appendix A) and its text embedding ``(N, E)``."""
        import torch
        import torch.nn.functional as F

        caps = [captions_of(s) for s in stimuli]
        flat = [c for cs in caps for c in cs] + [s.text for s, cs in zip(stimuli, caps) if not cs]
        emb = self._encode_texts(flat)
        img = F.normalize(image_emb, dim=-1)
        txt = F.normalize(emb, dim=-1)
        chosen, rows = [], []
        pos, extra = 0, sum(len(cs) for cs in caps)
        for i, (s, cs) in enumerate(zip(stimuli, caps)):
            if cs:
                sims = (txt[pos : pos + len(cs)] @ img[i]).cpu().numpy()
                j = select_caption(sims, seed=self.options.seed, stimulus_id=s.id)
                chosen.append(cs[j])
                rows.append(pos + j)
                pos += len(cs)
            else:
                chosen.append(s.text)
                rows.append(extra)
                extra += 1
        return chosen, emb[torch.as_tensor(rows, device=emb.device)]

    def encode_batch(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        model, clip = self._net, self.options.clip_value
        x = image_batch(stimuli, self._transform, self.name).to(self.torch_device())
        self._low_tokens = None
        image_emb = model.encode_image(x).float()
        low = self.to_numpy(reduce_tokens(self._low_tokens.float(), self._grid, self.options.low_pool))
        self._low_tokens = None
        parts = []
        if "image" in self.high_from:
            parts.append(clip_and_normalise(self.to_numpy(image_emb), clip))
        if "text" in self.high_from:
            self.last_texts, text_emb = self._texts(stimuli, image_emb)
            parts.append(clip_and_normalise(self.to_numpy(text_emb), clip))
        else:
            self.last_texts = [None] * len(stimuli)
        high = parts[0] if len(parts) == 1 else np.mean(parts, axis=0, dtype=np.float32)
        return GuidanceFeatures(low=clip_and_normalise(low, None), high=high.astype(np.float32))


class ClipImageGuidance(ClipGuidance):
    """CLIP-Img of Table E6: high = the image embedding only (clipped, L2-normalised); low as ``clip``."""

    name = "clip-image"
    needs = ("image",)
    description = "CLIP image encoder only (Table E6 CLIP-Img): low = first block, high = ±1.5-clipped unit image embedding"
    high_from = ("image",)


class ClipTextGuidance(ClipGuidance):
    """CLIP-Text of Table E6: high = the text embedding only (clipped, L2-normalised); low as ``clip``."""

    name = "clip-text"
    needs = ("image", "text")
    description = ("CLIP text encoder for high (Table E6 CLIP-Text): low = image first block, "
                   "high = ±1.5-clipped unit text embedding")
    high_from = ("text",)
