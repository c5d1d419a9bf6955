"""The pluggy hooks a foundation plugin package implements.

A plugin package is a module registered under the ``foundation`` entry-point group (see
``docs/PLUGINS.md``).  It implements one or both hooks below, decorated with :data:`hookimpl`::

    from foundation.core.hookspecs import hookimpl

    @hookimpl
    def foundation_dataset_plugins():
        return [MyDataset]

Each hook is called once per registered package; the results are validated and collected into
the registries of :mod:`foundation.core.plugins`.  The classes themselves follow the contract in
:mod:`foundation.core.api`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from foundation.core.api import DatasetPlugin, GuidancePlugin

PROJECT_NAME = "foundation"
"""The pluggy project name, which is also the entry-point group plugins register under."""

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def foundation_dataset_plugins() -> list[type[DatasetPlugin]]:
    """Return the dataset plugin classes this package provides.

    Each element must be a concrete subclass of :class:`foundation.core.api.DatasetPlugin` with a
    non-empty string ``name``; that name is what recipes write in ``datasets[].plugin`` and it
    must be unique across all installed packages.  Return an empty list (or ``None``) if the
    package provides no dataset plugin.

    Keep this hook cheap: return classes, do not read data or load weights here.
    """


@hookspec
def foundation_guidance_plugins() -> list[type[GuidancePlugin]]:
    """Return the guidance plugin classes this package provides.

    Each element must be a concrete subclass of :class:`foundation.core.api.GuidancePlugin` with a
    non-empty string ``name``; that name is what recipes write in ``guidance.low`` /
    ``guidance.high`` and it must be unique across all installed packages.  Return an empty list
    (or ``None``) if the package provides no guidance plugin.

    Keep this hook cheap: return classes, do not load network weights here.
    """
