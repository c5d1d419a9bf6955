"""AlexNet guidance (torchvision), the AlexNet row of Table E6.

- **low**: conv1 after its ReLU (``features[1]``, 64 channels × 55 × 55 for a 224 input; the
  classic Caffe ``conv1`` blob, whose ReLU is in place), reduced by ``low_pool`` (default ``mean``:
  global average over space → 64 values), L2-normalised.
- **high**: fc7 after its ReLU (``classifier[5]``, 4096 values; Caffe's ``fc7`` blob), L2-normalised
  (clipped first only if ``clip_value`` is set).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.core.api import GuidanceFeatures, Stimulus
from foundation.core.errors import RecipeError
from foundation_vision.common import NetworkGuidance, check_pool, clip_and_normalise, image_batch, reduce_map
from foundation_vision.weights import Candidate, WeightsPlan, load_into, load_state_dict, resolve, torch_hub_checkpoint

#: torchvision's file name for AlexNet_Weights.IMAGENET1K_V1
WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"


@dataclasses.dataclass(frozen=True)
class AlexNetOptions:
    """Options of the ``alexnet`` guidance plugin.

    Attributes:
        checkpoint: a local weight file (a torchvision AlexNet state dict); null: torch hub's cache
            ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth``; ``random``: random init on
            purpose (needs ``allow_random_weights``).
        seed: seeds the random initialisation (random weights only).
        low_pool: ``mean`` (global average of the conv1 map) or ``gridK`` (K×K spatial means).
        clip_value: clip the high feature to ±clip_value before L2 normalisation (null: no clipping).
        batch_size: stimuli per forward pass (0: the plugin default, 64).
    """

    checkpoint: str | None = None
    seed: int = 0
    low_pool: str = "mean"
    clip_value: float | None = None
    batch_size: int = 0


class AlexNetGuidance(NetworkGuidance):
    """torchvision AlexNet: low = conv1 (after ReLU, spatial mean), high = fc7 (after ReLU)."""

    name = "alexnet"
    Options = AlexNetOptions
    needs = ("image",)
    description = "torchvision AlexNet (ImageNet): low = conv1+ReLU (spatial mean), high = fc7+ReLU"
    batch_size = 64
    libraries = ("torch", "torchvision")

    def __init__(self, options: AlexNetOptions, *, device: str = "cpu", allow_random_weights: bool = False) -> None:
        super().__init__(options, device=device, allow_random_weights=allow_random_weights)
        if check_pool(options.low_pool, plugin=self.name) == "cls":
            raise RecipeError(f"guidance.options.{self.name}.low_pool: 'cls' needs tokens; AlexNet's conv1 is a "
                              f"feature map (use 'mean' or 'gridK')")

    @property
    def feature_doc(self) -> dict[str, str]:  # type: ignore[override]
        clip = f"clipped to ±{self.options.clip_value}, " if self.options.clip_value is not None else ""
        return {"low": f"features[1] (conv1 + ReLU), {self.options.low_pool} over space, L2-normalised",
                "high": f"classifier[5] (fc7 + ReLU), {clip}L2-normalised"}

    def plan_weights(self) -> WeightsPlan:
        o, where = self.options, f"guidance.options.{self.name}.checkpoint"
        how = (f"on a machine with internet, download {WEIGHTS_URL} (or run `python -c \"import torchvision; "
               f"torchvision.models.alexnet(weights='IMAGENET1K_V1')\"`) and copy it to "
               f"{torch_hub_checkpoint(WEIGHTS_FILE)} or pass {where}=/path/to/{WEIGHTS_FILE}")
        if o.checkpoint is not None:
            path = Path(o.checkpoint).expanduser()
            return resolve([Candidate(path, where)], plugin=self.name, file=str(path), how=how,
                           allow_random=self.allow_random_weights, explicit=o.checkpoint, names=(WEIGHTS_FILE,))
        return resolve([Candidate(torch_hub_checkpoint(WEIGHTS_FILE), "torch hub cache")], plugin=self.name,
                       file=WEIGHTS_FILE, how=how, allow_random=self.allow_random_weights)

    def describe(self) -> dict[str, Any]:
        return {"network": "torchvision alexnet", "low_pool": self.options.low_pool,
                "clip_value": self.options.clip_value}

    def build(self) -> Any:
        from torchvision.models import AlexNet_Weights, alexnet

        model = alexnet(weights=None)
        plan = self.plan
        if plan.path is not None:
            load_into(model, load_state_dict(plan.path, plugin=self.name), plugin=self.name, path=plan.path)
        model = model.eval().to(self.torch_device())
        self._taps: dict[str, Any] = {}

        def tap(key: str) -> Any:
            def keep(_module: Any, _inputs: Any, output: Any) -> None:
                self._taps[key] = output

            return keep

        model.features[1].register_forward_hook(tap("low"))  # ReLU after conv1
        model.classifier[5].register_forward_hook(tap("high"))  # ReLU after fc7
        # the preset of the ImageNet weights: resize 256 (bilinear), centre crop 224, ImageNet mean/std
        self._transform = AlexNet_Weights.IMAGENET1K_V1.transforms()
        return model

    def encode_batch(self, stimuli: Sequence[Stimulus]) -> GuidanceFeatures:
        x = image_batch(stimuli, self._transform, self.name).to(self.torch_device())
        self._taps.clear()
        self._net(x)
        low = reduce_map(self._taps["low"].float(), self.options.low_pool)
        high = self._taps["high"].float()
        self._taps.clear()
        return GuidanceFeatures(low=clip_and_normalise(self.to_numpy(low), None),
                                high=clip_and_normalise(self.to_numpy(high), self.options.clip_value))
