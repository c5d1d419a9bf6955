"""The one plugin manager: discovery, registries and lookup of dataset and guidance plugins.

Plugins are code, so only two things are ever loaded: modules declared by *installed*
distributions under the ``foundation`` entry-point group, and modules a user names explicitly
(:func:`register_module`).  Nothing is imported from the working directory or a recipe's folder
on its own.

Every failure raises :class:`~foundation.core.errors.PluginError` naming the culprit: the entry point,
its module and the distribution that provides it (or the explicitly named module), with the
original exception chained.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Literal, cast

import pluggy

from foundation.core import hookspecs
from foundation.core.api import DatasetPlugin, GuidancePlugin
from foundation.core.errors import PluginError

PluginKind = Literal["dataset", "guidance"]

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

_BASES: dict[PluginKind, type] = {"dataset": DatasetPlugin, "guidance": GuidancePlugin}
_HOOKS: dict[PluginKind, str] = {
    "dataset": "foundation_dataset_plugins",
    "guidance": "foundation_guidance_plugins",
}


@dataclasses.dataclass(frozen=True)
class PluginEntry:
    """One registered plugin class.

    Attributes:
        kind: ``"dataset"`` or ``"guidance"``.
        name: what recipes write to select it.
        cls: the plugin class (subclass of the kind's base class in :mod:`foundation.core.api`).
        origin: where it came from, for humans, e.g.
            ``foundation 0.1.0 (entry point 'synthetic' → foundation_synthetic.plugin)``.
        description: one line for ``foundation plugins``.
    """

    kind: PluginKind
    name: str
    cls: type
    origin: str
    description: str


class FoundationPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` that remembers where each registered module came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        self._registries: dict[PluginKind, dict[str, PluginEntry]] | None = None

    def origin_of(self, plugin_name: str) -> str:
        """Human description of where the module registered as ``plugin_name`` came from."""
        return self.origins.get(plugin_name, f"direct registration of {plugin_name!r}")

    def register_origin(self, module: ModuleType, name: str, origin: str) -> None:
        """Register ``module`` under ``name``; a name clash is a :class:`PluginError` naming both.

        A module that is already registered (two entry points naming the same module) is skipped.
        """
        if self.is_registered(module):
            return
        if self.has_plugin(name):
            raise PluginError(
                f"two plugin packages use the name {name!r}: {self.origin_of(name)} and {origin}; "
                f"uninstall or rename one of them"
            )
        self.origins[name] = origin
        self._registries = None
        try:
            self.register(module, name=name)
        except Exception as exc:  # pluggy validates hookimpls against the specs here
            del self.origins[name]
            raise PluginError(f"plugin {name!r} from {origin} could not be registered: {exc}") from exc

    def registries(self) -> dict[PluginKind, dict[str, PluginEntry]]:
        """The dataset and guidance registries, built on first use by calling the hooks."""
        if self._registries is None:
            self._registries = {kind: _collect(self, kind) for kind in _HOOKS}
        return self._registries


_manager: FoundationPluginManager | None = None


def _entry_points() -> list[EntryPoint]:
    """Installed entry points of the ``foundation`` group (tests monkeypatch this)."""
    return list(entry_points(group=ENTRY_POINT_GROUP))


def _entry_point_origin(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    provider = f"{dist.name} {dist.version}" if dist is not None else "unknown distribution"
    return f"{provider} (entry point {ep.name!r} → {ep.value})"


def get_plugin_manager(*, refresh: bool = False) -> FoundationPluginManager:
    """The process-wide plugin manager, with every installed ``foundation`` entry point loaded.

    Built once and cached; ``refresh=True`` discards the cache (including modules added with
    :func:`register_module`) and discovers the installed entry points again.

    Raises:
        PluginError: an entry point failed to import or register; the message names the entry
            point, its module and its distribution.
    """
    global _manager
    if _manager is not None and not refresh:
        return _manager
    _manager = None
    pm = FoundationPluginManager()
    for ep in _entry_points():
        origin = _entry_point_origin(ep)
        try:
            module = ep.load()
        except Exception as exc:
            raise PluginError(
                f"plugin {origin} failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        pm.register_origin(module, ep.name, origin)
    _manager = pm
    return pm


def register_module(module_path: str) -> None:
    """Import ``module_path`` and register it as a plugin package (a user named it explicitly).

    Registering the same module twice is a no-op, so recipes may name it on every run.

    Raises:
        PluginError: the module failed to import or to register; the message names it.
    """
    pm = get_plugin_manager()
    origin = f"module {module_path} (named explicitly)"
    try:
        module = importlib.import_module(module_path)
    except Exception as exc:
        raise PluginError(
            f"plugin module {module_path!r} (named explicitly) failed to import: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    pm.register_origin(module, module_path, origin)


def _describe(cls: type) -> str:
    text = getattr(cls, "description", "") or inspect.getdoc(cls) or ""
    return text.strip().splitlines()[0] if text.strip() else ""


def _validate(kind: PluginKind, item: Any, plugin_name: str, origin: str) -> PluginEntry:
    """Check one class returned by a hook; raise :class:`PluginError` naming the plugin if wrong."""
    base = _BASES[kind]
    where = f"plugin {plugin_name!r} from {origin}, hook {_HOOKS[kind]}"
    if not (isinstance(item, type) and issubclass(item, base)):
        raise PluginError(
            f"{where} returned {item!r}, which is not a subclass of foundation.core.api.{base.__name__}"
        )
    label = f"{item.__module__}.{item.__qualname__}"
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not name.strip():
        raise PluginError(f"{where}: class {label} needs a non-empty string class attribute `name`")
    if inspect.isabstract(item):
        missing = ", ".join(sorted(getattr(item, "__abstractmethods__", ())))
        raise PluginError(f"{where}: class {label} ({name!r}) does not implement {missing}")
    if not dataclasses.is_dataclass(item.Options):
        raise PluginError(f"{where}: class {label} ({name!r}) has `Options` that is not a dataclass")
    return PluginEntry(kind=kind, name=name, cls=item, origin=origin, description=_describe(item))


def _collect(pm: FoundationPluginManager, kind: PluginKind) -> dict[str, PluginEntry]:
    """Call one hook on every registered module separately, so a failure names its module."""
    registry: dict[str, PluginEntry] = {}
    hook = getattr(pm.hook, _HOOKS[kind])
    for impl in hook.get_hookimpls():  # registration order (tryfirst/trylast aside)
        if impl.hookwrapper or impl.wrapper:
            continue
        origin = pm.origin_of(impl.plugin_name)
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} from {origin} raised in hook {_HOOKS[kind]}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if result is None:
            continue
        if isinstance(result, (str, bytes, type)) or not hasattr(result, "__iter__"):
            raise PluginError(
                f"plugin {impl.plugin_name!r} from {origin}, hook {_HOOKS[kind]} must return a list "
                f"of classes, got {result!r}"
            )
        for item in result:
            entry = _validate(kind, item, impl.plugin_name, origin)
            previous = registry.get(entry.name)
            if previous is not None and previous.cls is not entry.cls:
                raise PluginError(
                    f"two {kind} plugins are named {entry.name!r}: {previous.cls.__qualname__} from "
                    f"{previous.origin} and {entry.cls.__qualname__} from {entry.origin}; "
                    f"uninstall or rename one of them"
                )
            registry[entry.name] = entry
    return registry


def dataset_plugins() -> dict[str, PluginEntry]:
    """Every registered dataset plugin, by name."""
    return dict(get_plugin_manager().registries()["dataset"])


def guidance_plugins() -> dict[str, PluginEntry]:
    """Every registered guidance plugin, by name."""
    return dict(get_plugin_manager().registries()["guidance"])


def _lookup(kind: PluginKind, name: str) -> type:
    registry = get_plugin_manager().registries()[kind]
    if name in registry:
        return registry[name].cls
    names = sorted(registry)
    if not names:
        raise PluginError(
            f"unknown {kind} plugin {name!r}: no {kind} plugins are registered "
            f"(install a plugin package; see docs/PLUGINS.md)"
        )
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.5)
    hint = f"; did you mean {by_lower[close[0]]!r}?" if close else "."
    raise PluginError(
        f"unknown {kind} plugin {name!r}{hint} Registered {kind} plugins: {', '.join(names)} "
        f"(run `foundation plugins` to see where each comes from)"
    )


def get_dataset_plugin(name: str) -> type[DatasetPlugin]:
    """The dataset plugin class registered as ``name``; unknown names suggest the closest."""
    return cast("type[DatasetPlugin]", _lookup("dataset", name))


def get_guidance_plugin(name: str) -> type[GuidancePlugin]:
    """The guidance plugin class registered as ``name``; unknown names suggest the closest."""
    return cast("type[GuidancePlugin]", _lookup("guidance", name))


def plugin_table() -> str:
    """The table printed by ``foundation plugins``: kind, name, origin, description per plugin."""
    registries = get_plugin_manager().registries()
    rows = [("KIND", "NAME", "ORIGIN", "DESCRIPTION")]
    for kind in _HOOKS:
        for name in sorted(registries[kind]):
            e = registries[kind][name]
            rows.append((e.kind, e.name, e.origin, e.description))
    if len(rows) == 1:
        return "no plugins registered (install a plugin package; see docs/PLUGINS.md)"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    return "\n".join(line.rstrip() for line in lines)
