"""Load, validate, override, save and hash recipes.

A recipe is a YAML file that maps one-to-one onto :class:`foundation.core.config.Recipe`.  This module
turns plain data (what :func:`yaml.safe_load` returns) into those typed dataclasses and back:

* :func:`from_dict` builds any dataclass from a mapping, recursively and strictly: an unknown key
  or a value of the wrong type raises :class:`~foundation.core.errors.RecipeError` whose message starts
  with the dotted path of the culprit (``train.lr``, ``datasets.0.weight``).  The same function
  validates plugin ``Options`` dataclasses.
* :func:`to_dict` is its inverse (plain, JSON/YAML-safe data).
* :func:`parse_override` / :func:`apply_overrides` implement command-line overrides such as
  ``train.lr=3e-4`` or ``datasets.0.subjects=[sub-01,sub-02]``.
* :func:`load_recipe` / :func:`save_recipe` read and (atomically) write recipe files;
  :func:`validate_recipe` checks the facts that span several fields.
* :func:`recipe_hash` is a short, stable content hash.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union

import yaml

from foundation.core.atomic import atomic_open
from foundation.core.config import Recipe
from foundation.core.errors import RecipeError

__all__ = [
    "from_dict",
    "to_dict",
    "parse_override",
    "apply_overrides",
    "load_recipe",
    "save_recipe",
    "validate_recipe",
    "recipe_hash",
]

T = TypeVar("T")

# A string that reads as a decimal number: "3", "-0.5", ".5", "1e-3", "2.5E+4" (not "nan", "inf").
# PyYAML (YAML 1.1) loads ``1e-3`` -- no dot -- as a string, so float fields accept these.
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

# How YAML 1.1 spells booleans; used to map an unquoted ``no`` back onto a Literal["...", "no"].
_YAML_BOOL_WORDS = {
    True: ("yes", "y", "on", "true"),
    False: ("no", "n", "off", "false"),
}


# ---------------------------------------------------------------------------------------------
# plain data -> dataclass
# ---------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, path: str = "") -> T:
    """Build the dataclass ``cls`` from plain data, validating every key and value.

    Args:
        cls: a dataclass type (``Recipe``, ``TrainConfig``, a plugin's ``Options``...).
        data: a mapping of field name to value; missing keys take the dataclass defaults and
            ``None`` means "all defaults".  An instance of ``cls`` is returned unchanged.
        path: dotted path of ``data`` inside the whole recipe, used as a prefix in error
            messages (e.g. ``"datasets.0.options"``).

    Returns:
        A new ``cls`` instance whose fields have the annotated types (ints given to ``float``
        fields become floats, lists given to ``tuple`` fields become tuples).

    Raises:
        RecipeError: an unknown key (with a "did you mean" suggestion), a missing required key,
            a value of the wrong type, or a value the dataclass's ``__post_init__`` rejects.
            The message starts with the dotted path of the culprit.
        TypeError: ``cls`` is not a dataclass or uses an annotation this module cannot check.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise RecipeError(
            f"{_where(path)}: expected a mapping of {cls.__name__} fields, got {_describe(data)}"
        )

    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError) as exc:  # an annotation that cannot be resolved: a code bug
        raise TypeError(f"cannot resolve the field annotations of {cls.__qualname__}: {exc}") from exc

    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise RecipeError(_unknown_key_message(_join(path, key), key, list(fields)))

    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{_join(path, name)}: missing required key")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:  # e.g. a __post_init__ check of a plugin's Options
        raise RecipeError(f"{_where(path)}: invalid {cls.__name__}: {exc}") from exc


def _convert(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it converted (``path`` for errors)."""
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(path, tp, value)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is Union or origin is types.UnionType:
        return _convert_union(tp, args, value, path)
    if origin is Literal:
        return _convert_literal(tp, args, value, path)
    if origin is list or origin is Sequence:
        item_tp = args[0] if args else Any
        if not isinstance(value, (list, tuple)):
            raise _type_error(path, tp, value)
        return [_convert(item_tp, item, _join(path, i)) for i, item in enumerate(value)]
    if origin is tuple:
        return _convert_tuple(tp, args, value, path)
    if origin is dict or origin is Mapping:
        key_tp, val_tp = args if args else (Any, Any)
        if not isinstance(value, Mapping):
            raise _type_error(path, tp, value)
        out = {}
        for k, v in value.items():
            key = _convert(key_tp, k, _join(path, k))
            out[key] = _convert(val_tp, v, _join(path, k))
        return out
    if origin is not None:
        raise TypeError(f"{_where(path)}: unsupported annotation {_type_name(tp)}")

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path=path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(path, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(path, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
            return float(value)
        raise _type_error(path, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(path, tp, value)
    if isinstance(tp, type) and issubclass(tp, PurePath):
        if isinstance(value, (str, PurePath)):
            return tp(value)
        raise _type_error(path, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _type_error(path, tp, value)
    raise TypeError(f"{_where(path)}: unsupported annotation {tp!r}")


def _convert_union(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> Any:
    """``Optional[X]`` / ``X | Y``: ``None`` if allowed, else the first member that accepts ``value``."""
    if value is None and type(None) in args:
        return None
    members = [a for a in args if a is not type(None)]
    if len(members) == 1:  # Optional[X]: X's own (more precise) error message
        return _convert(members[0], value, path)
    for member in members:
        try:
            return _convert(member, value, path)
        except RecipeError:
            continue
    raise _type_error(path, tp, value)


def _convert_literal(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> Any:
    """``Literal[...]``: the value must equal one of the allowed values (and have its type)."""
    for allowed in args:
        if type(value) is type(allowed) and value == allowed:
            return allowed
    if isinstance(value, bool):
        # YAML 1.1 reads an unquoted ``no``/``off``/``yes``/``on`` as a bool.  If exactly one
        # allowed string is such a spelling of this bool, that is what the user wrote.
        words = [a for a in args if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
        if len(words) == 1:
            return words[0]
    raise _type_error(path, tp, value)


def _convert_tuple(tp: Any, args: tuple[Any, ...], value: Any, path: str) -> tuple[Any, ...]:
    """``tuple[X, ...]`` (any length) or ``tuple[X, Y, Z]`` (fixed length); accepts lists."""
    if not isinstance(value, (list, tuple)):
        raise _type_error(path, tp, value)
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], item, _join(path, i)) for i, item in enumerate(value))
    if args == ((),):  # tuple[()]: the empty tuple
        args = ()
    if len(value) != len(args):
        raise RecipeError(
            f"{_where(path)}: expected {_type_name(tp)} ({len(args)} items), "
            f"got {len(value)} items {_short_repr(value)}"
        )
    return tuple(_convert(a, item, _join(path, i)) for i, (a, item) in enumerate(zip(args, value)))


# ---------------------------------------------------------------------------------------------
# dataclass -> plain data
# ---------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a dataclass instance into plain JSON/YAML-safe data (dicts, lists, scalars).

    Nested dataclasses become dicts, tuples become lists and paths become strings, so the
    result can be fed to :func:`yaml.safe_dump`, :func:`json.dumps` or back to :func:`from_dict`.

    Raises:
        TypeError: ``obj`` is not a dataclass instance, or holds a value with no plain form.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict needs a dataclass instance, got {obj!r}")
    return _plain(obj)


def _plain(value: Any) -> Any:
    """Recursive worker of :func:`to_dict` (also accepts mappings and sequences)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, PurePath):
        return str(value)
    raise TypeError(f"cannot turn {type(value).__name__} {_short_repr(value)} into plain data")


# ---------------------------------------------------------------------------------------------
# command-line overrides
# ---------------------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.0.c=value"`` into ``(["a", "b", "0", "c"], value)``.

    The value is parsed with :func:`yaml.safe_load`, so ``3``, ``true``, ``null``, ``[a, b]``
    and ``{k: v}`` have their YAML meaning; an empty value (``key=``) is the empty string.
    Numeric strings such as ``3e-4`` (a string in YAML 1.1) become floats later, in
    :func:`from_dict`, where the field type is known.

    Raises:
        RecipeError: no ``=``, an empty key or key part, or a value that is not valid YAML.
    """
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"override {text!r}: empty key")
    parts = key.split(".")
    if any(not p.strip() for p in parts):
        raise RecipeError(f"override {text!r}: empty part in key {key!r}")
    parts = [p.strip() for p in parts]
    if not raw.strip():
        return parts, ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise RecipeError(f"override {text!r}: value is not valid YAML: {exc}") from exc
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with each ``KEY=VALUE`` override applied in order.

    Key parts are dict keys, or list indices when the container is a list.  Missing dict keys
    (and ``null`` values on the way) are created as new dicts, so an override may add a key;
    :func:`from_dict` then rejects it if the schema has no such field.  ``data`` is not modified.

    Raises:
        RecipeError: naming the override, if it is malformed, indexes a list with something
            other than an in-range index, or descends into a scalar value.
    """
    if isinstance(overrides, str):  # a lone string would be iterated character by character
        overrides = [overrides]
    result = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = result
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth]) or "the top level"
            if isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            elif isinstance(node, list):
                if not part.isdigit():
                    raise RecipeError(
                        f"override {text!r}: {where} is a list, so {part!r} must be an index"
                    )
                index = int(part)
                if index >= len(node):
                    raise RecipeError(
                        f"override {text!r}: index {index} out of range, {where} has {len(node)} items"
                    )
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = {}
                    node = node[index]
            else:
                raise RecipeError(
                    f"override {text!r}: cannot set {part!r} inside {where}, "
                    f"which is {_describe(node)}, not a mapping or list"
                )
    return result


# ---------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML file, apply command-line overrides and validate the result.

    The file is read with :func:`yaml.safe_load`; an empty file means "all defaults".  A recipe
    without ``name`` is named after the file stem.  The file is validated first (errors name
    the file and key path), then the overrides are applied to the fully resolved recipe --
    so ``datasets.0.weight=2`` works even if the file relies on the default dataset list --
    and the result is validated again, together with :func:`validate_recipe`.

    Raises:
        RecipeError: missing/unreadable file, YAML syntax error (with line and column), a top
            level that is not a mapping, a bad key or value, a bad override, or a failed
            cross-field check.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read recipe file {path}: {exc}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML{_yaml_location(exc)}: {_yaml_problem(exc)}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: the top level of a recipe must be a mapping, got {_describe(raw)}")
    raw.setdefault("name", path.stem)

    try:
        recipe = from_dict(Recipe, raw)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from exc
    if overrides:
        if isinstance(overrides, str):
            overrides = [overrides]
        data = apply_overrides(to_dict(recipe), overrides)
        try:
            recipe = from_dict(Recipe, data)
        except RecipeError as exc:
            raise RecipeError(f"{exc} (recipe {path} with overrides {list(overrides)})") from exc
    try:
        validate_recipe(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{path}: {exc}") from exc
    return recipe


def validate_recipe(recipe: Recipe) -> None:
    """Check the facts that involve several fields or ranges; raise :class:`RecipeError` if not.

    Checks: at least one dataset, unique dataset ids, finite positive dataset weights, train fractions
    in (0, 1], no repeated subject, positive
    batch sizes, ``train.steps``, ``train.grad_accum``, intervals (``train.eval_every``,
    ``checkpoint_every``, ``log_every``), ``train.keep_checkpoints``, ``shards.samples_per_shard`` and
    model sizes, and ``model.dim`` divisible by ``model.heads``.
    """
    if not recipe.datasets:
        raise RecipeError("datasets: a recipe needs at least one dataset")
    seen: dict[str, int] = {}
    for i, ds in enumerate(recipe.datasets):
        if ds.id in seen:
            raise RecipeError(
                f"datasets.{i}: duplicate dataset id {ds.id!r} (also datasets.{seen[ds.id]}); "
                "give each dataset a distinct 'name'"
            )
        seen[ds.id] = i
        if not (math.isfinite(ds.weight) and ds.weight > 0):
            raise RecipeError(f"datasets.{i}.weight: must be a finite number > 0, got {ds.weight!r}")
        if not (math.isfinite(ds.train_fraction) and 0 < ds.train_fraction <= 1):
            raise RecipeError(f"datasets.{i}.train_fraction: must be in (0, 1], got {ds.train_fraction!r}")
        if ds.subjects is not None and len(set(ds.subjects)) != len(ds.subjects):
            dupes = sorted({s for s in ds.subjects if ds.subjects.count(s) > 1})
            raise RecipeError(f"datasets.{i}.subjects: duplicate subject id(s) {dupes}")

    positive = {
        "train.batch_size": recipe.train.batch_size,
        "train.eval_batch_size": recipe.train.eval_batch_size,
        "train.steps": recipe.train.steps,
        "train.grad_accum": recipe.train.grad_accum,
        "train.eval_every": recipe.train.eval_every,
        "train.checkpoint_every": recipe.train.checkpoint_every,
        "train.log_every": recipe.train.log_every,
        "train.keep_checkpoints": recipe.train.keep_checkpoints,
        "shards.samples_per_shard": recipe.shards.samples_per_shard,
        "model.dim": recipe.model.dim,
        "model.depth": recipe.model.depth,
        "model.heads": recipe.model.heads,
    }
    for key, value in positive.items():
        if value <= 0:
            raise RecipeError(f"{key}: must be > 0, got {value}")
    if recipe.model.backbone == "mlp" and recipe.model.tokens != "shared":
        raise RecipeError(f"model.backbone: 'mlp' reads no tokens; it needs model.tokens=shared, "
                          f"got {recipe.model.tokens!r}")
    if recipe.model.dim % recipe.model.heads:
        raise RecipeError(
            f"model.dim: {recipe.model.dim} is not divisible by model.heads={recipe.model.heads}"
        )


def save_recipe(recipe: Recipe, path: str | Path) -> None:
    """Write the resolved ``recipe`` to ``path`` as YAML, atomically (see :mod:`foundation.core.atomic`)."""
    text = yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)
    with atomic_open(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------------------------------------
# hashing
# ---------------------------------------------------------------------------------------------


def recipe_hash(data: Any) -> str:
    """A stable 16-hex-digit sha256 of ``data`` (a mapping or a dataclass instance).

    The hash is taken over canonical JSON (sorted keys, no spaces), so it does not depend on key
    order; dataclasses are hashed through :func:`to_dict`.
    """
    plain = to_dict(data) if dataclasses.is_dataclass(data) and not isinstance(data, type) else _plain(data)
    canonical = json.dumps(plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# error-message helpers
# ---------------------------------------------------------------------------------------------


def _join(path: str, key: Any) -> str:
    """``_join("train", "lr") == "train.lr"``; ``_join("", "train") == "train"``."""
    return f"{path}.{key}" if path else str(key)


def _where(path: str) -> str:
    return path or "(top level)"


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(value: Any) -> str:
    """``"str 'abc'"``: the type name and a short repr of a value, for error messages."""
    if value is None:
        return "null"
    return f"{type(value).__name__} {_short_repr(value)}"


def _type_name(tp: Any) -> str:
    """A readable name for an annotation: ``float``, ``list[str]``, ``float | None``..."""
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is None:
        return getattr(tp, "__name__", repr(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
    name = getattr(origin, "__name__", repr(origin))
    return f"{name}[{inner}]" if args else name


def _type_error(path: str, tp: Any, value: Any) -> RecipeError:
    message = f"{_where(path)}: expected {_type_name(tp)}, got {_describe(value)}"
    if isinstance(value, bool) and tp is not bool:
        message += " (YAML reads unquoted yes/no/on/off/true/false as booleans; quote it)"
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and tp is str:
        message += " (quote it to keep it a string, e.g. '01')"
    return RecipeError(message)


def _unknown_key_message(full_path: str, key: Any, valid: list[str]) -> str:
    close = difflib.get_close_matches(str(key), valid, n=1)
    if close:
        return f"{full_path}: unknown key; did you mean {close[0]!r}?"
    return f"{full_path}: unknown key; valid keys are: {', '.join(valid)}"


def _yaml_location(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is None:
        return ""
    return f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        return f"{context}, {problem}" if context else str(problem)
    return str(exc).replace("\n", " ")
