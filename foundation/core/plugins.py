"""The one plugin manager: discovery, registries and lookup of dataset and guidance plugins.

Plugins are code, so only two things are ever loaded: modules declared by *installed*
distributions under the ``foundation`` entry-point group, and modules a user names explicitly
(:func:`register_module`).  Nothing is imported from the working directory or a recipe's folder
on its own.

A broken plugin package (one that fails to import, whose hook raises or returns something that is
not a plugin class, or that uses a name another package uses too) is isolated: it is recorded, listed
by ``foundation plugins`` as broken, and only a command that needs one of its names fails, with a
:class:`~foundation.core.errors.PluginError` naming the culprit — the entry point, its module and the
distribution that provides it (or the explicitly named module) — and the original exception chained.

What is pluggy's and what is ours.  Registration (:meth:`pluggy.PluginManager.register`, which checks
every ``@hookimpl`` against :mod:`foundation.core.hookspecs`) and hook calls are pluggy's: each package's
hook is called through :meth:`pluggy.PluginManager.subset_hook_caller`, a ``pm.hook.<name>`` caller
restricted to that one package, so a failure is that package's alone.  Discovery is a thin loop of ours
over :func:`importlib.metadata.entry_points` (:func:`get_plugin_manager`), one ``try`` per entry point,
because :meth:`pluggy.PluginManager.load_setuptools_entrypoints` does not do this job alone:

* it calls ``ep.load()`` and ``register`` without catching anything, so the first package that fails to
  import (a missing dependency) ends discovery, and every entry point after it is never loaded;
* it skips an entry point whose name is already registered without a word, so of two packages using one
  name the first found wins silently; we name both (``two plugin packages use the name ...``);
* it reads ``importlib.metadata.distributions()`` itself and takes no list of entry points, so the
  isolation cannot be tested with a broken package that is not installed (tests hand
  :func:`_entry_points` a fake one).

Its ``list_plugin_distinfo`` is filled only by that loader; the origin we keep per package
(``PluginEntry.origin``: distribution, version, entry point, module) is read from the same
``EntryPoint.dist``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import logging
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any, Literal, cast

import pluggy

from foundation.core import hookspecs
from foundation.core.api import DatasetPlugin, GuidancePlugin
from foundation.core.errors import PluginError, exception_text

PluginKind = Literal["dataset", "guidance"]

log = logging.getLogger(__name__)

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


@dataclasses.dataclass(frozen=True)
class BrokenPlugin:
    """A plugin package (or one name) that could not be used, and why.

    Attributes:
        name: the entry-point name (a package that failed) or the plugin name (a name conflict).
        origin: where it came from, as in :attr:`PluginEntry.origin`.
        error: the one-line :class:`PluginError` message.
        cause: the exception behind it (chained when a command needs the package).
        kind: ``"dataset"``/``"guidance"`` for a problem with one hook or name, else ``None``.
        conflict: a plugin name two packages use (``name`` is that plugin name), not a broken package.
    """

    name: str
    origin: str
    error: str
    cause: BaseException | None = None
    kind: PluginKind | None = None
    conflict: bool = False

    def raise_error(self) -> None:
        raise PluginError(self.error) from self.cause


class FoundationPluginManager(pluggy.PluginManager):
    """A :class:`pluggy.PluginManager` that remembers where each registered module came from."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}
        #: packages that failed to import or register, by entry-point name
        self.broken: dict[str, BrokenPlugin] = {}
        self._registries: dict[PluginKind, dict[str, PluginEntry]] | None = None
        self._problems: dict[PluginKind, list[BrokenPlugin]] = {}

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
        """The dataset and guidance registries, built on first use by calling the hooks; packages whose
        hook fails and names two packages use are left out (see :meth:`problems`)."""
        if self._registries is None:
            built = {kind: _collect(self, kind) for kind in _HOOKS}
            self._problems = {kind: problems for kind, (_, problems) in built.items()}
            self._registries = {kind: registry for kind, (registry, _) in built.items()}
        return self._registries

    def problems(self) -> list[BrokenPlugin]:
        """Every broken package and name conflict: import failures first, then per kind."""
        self.registries()
        return [*self.broken.values(), *(p for kind in _HOOKS for p in self._problems[kind])]


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

    An entry point that fails to import or register does not stop discovery: it is recorded in
    ``broken`` (listed by ``foundation plugins``; a lookup of a name it may provide raises).
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
            pm.broken[ep.name] = BrokenPlugin(ep.name, origin, f"plugin {origin} failed to import: "
                                              f"{exception_text(exc)}", exc)
            log.info("%s", pm.broken[ep.name].error)
            continue
        try:
            pm.register_origin(module, ep.name, origin)
        except PluginError as exc:
            pm.broken[ep.name] = BrokenPlugin(ep.name, origin, str(exc), exc.__cause__ or exc)
            log.info("%s", exc)
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
            f"plugin module {module_path!r} (named explicitly) failed to import: {exception_text(exc)}"
        ) from exc
    pm.register_origin(module, module_path, origin)


def _describe(cls: type) -> str:
    # the class's own docstring only: an undocumented subclass must not show its base class's
    text = getattr(cls, "description", "") or inspect.cleandoc(cls.__doc__ or "")
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


def _hook_entries(pm: FoundationPluginManager, impl: Any, kind: PluginKind, origin: str) -> list[PluginEntry]:
    """The validated classes one module's hook returns; :class:`PluginError` naming it if anything is wrong.

    The hook is called through pluggy (``pm.hook.<name>`` restricted to this one module by
    :meth:`~pluggy.PluginManager.subset_hook_caller`), so a failure is this module's alone."""
    others = [p for p in pm.get_plugins() if p is not impl.plugin]
    try:
        results = pm.subset_hook_caller(_HOOKS[kind], remove_plugins=others)()
        result = results[0] if results else None  # pluggy leaves out a None result
    except Exception as exc:
        raise PluginError(
            f"plugin {impl.plugin_name!r} from {origin} raised in hook {_HOOKS[kind]}: "
            f"{exception_text(exc)}"
        ) from exc
    if result is None:
        return []
    if isinstance(result, (str, bytes, type)) or not hasattr(result, "__iter__"):
        raise PluginError(
            f"plugin {impl.plugin_name!r} from {origin}, hook {_HOOKS[kind]} must return a list "
            f"of classes, got {result!r}"
        )
    return [_validate(kind, item, impl.plugin_name, origin) for item in result]


def _collect(pm: FoundationPluginManager, kind: PluginKind) -> tuple[dict[str, PluginEntry], list[BrokenPlugin]]:
    """Call one hook on every registered module separately, so a failure names its module.

    Returns the registry and its problems: a module whose hook fails contributes nothing (all or
    none of its classes), and a name two modules use is left out, so that neither is picked silently.
    """
    registry: dict[str, PluginEntry] = {}
    problems: list[BrokenPlugin] = []
    conflicts: dict[str, list[PluginEntry]] = {}
    hook = getattr(pm.hook, _HOOKS[kind])
    for impl in hook.get_hookimpls():  # registration order (tryfirst/trylast aside)
        if impl.hookwrapper or impl.wrapper:
            continue
        origin = pm.origin_of(impl.plugin_name)
        try:
            entries = _hook_entries(pm, impl, kind, origin)
        except PluginError as exc:
            problems.append(BrokenPlugin(impl.plugin_name, origin, str(exc), exc.__cause__ or exc, kind))
            log.info("%s", exc)
            continue
        for entry in entries:
            previous = registry.get(entry.name)
            if previous is not None and previous.cls is not entry.cls:
                conflicts.setdefault(entry.name, [previous]).append(entry)
            registry.setdefault(entry.name, entry)
    for name, entries in conflicts.items():
        del registry[name]
        first, second = entries[0], entries[1]
        problems.append(BrokenPlugin(
            name, f"{first.origin}; {second.origin}",
            f"two {kind} plugins are named {name!r}: {first.cls.__qualname__} from {first.origin} and "
            f"{second.cls.__qualname__} from {second.origin}; uninstall or rename one of them", None, kind,
            conflict=True))
    return registry, problems


def dataset_plugins() -> dict[str, PluginEntry]:
    """Every registered dataset plugin, by name."""
    return dict(get_plugin_manager().registries()["dataset"])


def guidance_plugins() -> dict[str, PluginEntry]:
    """Every registered guidance plugin, by name."""
    return dict(get_plugin_manager().registries()["guidance"])


def _lookup(kind: PluginKind, name: str) -> type:
    pm = get_plugin_manager()
    registry = pm.registries()[kind]
    if name in registry:
        return registry[name].cls
    problems = pm.problems()
    for p in problems:  # the name itself is ambiguous
        if p.conflict and p.kind == kind and p.name == name:
            p.raise_error()
    # packages that failed entirely, or whose hook of this kind failed, may be the one that provides it
    suspects = [p for p in problems if not p.conflict and p.kind in (None, kind)]
    broken = ""
    if suspects:
        listed = "; ".join(p.error for p in suspects)
        broken = (f" {len(suspects)} plugin package(s) could not be loaded and may provide it: {listed}")
    names = sorted(registry)
    if not names:
        message = (f"unknown {kind} plugin {name!r}: no {kind} plugins are registered "
                   f"(install a plugin package; see docs/PLUGINS.md).{broken}")
    else:
        by_lower = {n.lower(): n for n in names}
        close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1, cutoff=0.5)
        hint = f"; did you mean {by_lower[close[0]]!r}?" if close else "."
        message = (f"unknown {kind} plugin {name!r}{hint} Registered {kind} plugins: {', '.join(names)} "
                   f"(run `foundation plugins` to see where each comes from).{broken}")
    cause = suspects[0].cause if len(suspects) == 1 else None
    raise PluginError(message) from cause


def get_dataset_plugin(name: str) -> type[DatasetPlugin]:
    """The dataset plugin class registered as ``name``; unknown names suggest the closest."""
    return cast("type[DatasetPlugin]", _lookup("dataset", name))


def get_guidance_plugin(name: str) -> type[GuidancePlugin]:
    """The guidance plugin class registered as ``name``; unknown names suggest the closest."""
    return cast("type[GuidancePlugin]", _lookup("guidance", name))


def plugin_table() -> str:
    """The table printed by ``foundation plugins``: kind, name, origin, description per plugin, then
    one ``broken`` row per package that could not be loaded (the description says why)."""
    pm = get_plugin_manager()
    registries = pm.registries()
    rows = [("KIND", "NAME", "ORIGIN", "DESCRIPTION")]
    for kind in _HOOKS:
        for name in sorted(registries[kind]):
            e = registries[kind][name]
            description = e.description
            if kind == "dataset" and getattr(e.cls, "takes_raw_input", lambda: False)():
                description += " [takes predict --raw]"
            rows.append((e.kind, e.name, e.origin, description))
    for p in pm.problems():
        rows.append(("broken", p.name, p.origin, p.error))
    if len(rows) == 1:
        return "no plugins registered (install a plugin package; see docs/PLUGINS.md)"
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    return "\n".join(line.rstrip() for line in lines)
