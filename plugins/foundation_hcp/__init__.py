"""foundation's built-in ``hcp`` dataset plugin: WU-Minn HCP 7T movie watching, read in its download layout.

Modules: :mod:`~foundation_hcp.layout` (paths), :mod:`~foundation_hcp.segments` (clip segments, the
split, ``python -m foundation_hcp.segments convert``), :mod:`~foundation_hcp.labels` (WordNet),
:mod:`~foundation_hcp.volumes` (crop, mask, streamed normalised runs), :mod:`~foundation_hcp.frames`
(movie frames) and :mod:`~foundation_hcp.plugin` (the plugin and its pluggy hook).
"""

from typing import Any

__all__ = ["HCPMovieDataset", "HCPOptions", "stimulus_id"]


def __getattr__(name: str) -> Any:
    # lazy, so `python -m foundation_hcp.segments` does not import the plugin (and segments) first
    if name in __all__:
        from foundation_hcp import plugin

        return getattr(plugin, name)
    raise AttributeError(f"module 'foundation_hcp' has no attribute {name!r}")
