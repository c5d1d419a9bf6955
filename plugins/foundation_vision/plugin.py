"""The hook of the built-in network guidance plugins (cheap: returns classes, loads nothing).

torch, open_clip, timm and transformers are imported only when a plugin first encodes.
"""

from __future__ import annotations

from foundation.core.api import GuidancePlugin
from foundation.core.hookspecs import hookimpl
from foundation_vision.alexnet import AlexNetGuidance
from foundation_vision.clip import ClipGuidance, ClipImageGuidance, ClipTextGuidance
from foundation_vision.text import MiniLMGuidance
from foundation_vision.vit import VitGuidance

GUIDANCE_PLUGINS: list[type[GuidancePlugin]] = [
    ClipGuidance, ClipImageGuidance, ClipTextGuidance, VitGuidance, AlexNetGuidance, MiniLMGuidance,
]


@hookimpl
def foundation_guidance_plugins() -> list[type[GuidancePlugin]]:
    return list(GUIDANCE_PLUGINS)
