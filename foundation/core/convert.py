"""Plain data ⇄ typed dataclasses, strictly: the conversion behind recipes, plugin ``Options`` and
the checkpoint and shard metadata.

* :func:`from_dict` builds any dataclass from a mapping, recursively and strictly: an unknown key
  or a value of the wrong type raises :class:`~foundation.core.errors.RecipeError` whose message starts
  with the dotted path of the culprit (``train.lr``, ``datasets.0.weight``).
* Fields annotated ``Annotated[T, Gt(0), ...]`` (:mod:`annotated_types` constraints: ``Gt``, ``Ge``,
  ``Lt``, ``Le``, ``MultipleOf``, ``MinLen``/``MaxLen`` and the ``math.isfinite`` ``Predicate``) are
  range-checked after conversion: ``train.lr: must be > 0, got -1.0``.
* :func:`to_dict` is its inverse (plain, JSON/YAML-safe data).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar, Union

import annotated_types as at

from foundation.core.errors import RecipeError

__all__ = ["from_dict", "to_dict"]

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
        hints = typing.get_type_hints(cls, include_extras=True)  # keeps Annotated[...] constraints
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

    if origin is Annotated:
        converted = _convert(args[0], value, path)
        for constraint in tp.__metadata__:
            _check_constraint(constraint, converted, path)
        return converted
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


def _check_constraint(constraint: Any, value: Any, path: str) -> None:
    """Raise :class:`RecipeError` unless ``value`` meets one :mod:`annotated_types` constraint."""
    if isinstance(constraint, at.GroupedMetadata):  # e.g. Interval(gt=0, le=1): its parts one by one
        for part in constraint:
            _check_constraint(part, value, path)
        return
    failed = None
    if isinstance(constraint, (at.Gt, at.Ge, at.Lt, at.Le)):
        if isinstance(value, float) and math.isnan(value):
            failed = "must be a number, not NaN"
        elif isinstance(constraint, at.Gt) and not value > constraint.gt:
            failed = f"must be > {constraint.gt}"
        elif isinstance(constraint, at.Ge) and not value >= constraint.ge:
            failed = f"must be >= {constraint.ge}"
        elif isinstance(constraint, at.Lt) and not value < constraint.lt:
            failed = f"must be < {constraint.lt}"
        elif isinstance(constraint, at.Le) and not value <= constraint.le:
            failed = f"must be <= {constraint.le}"
    elif isinstance(constraint, at.MultipleOf):
        if value % constraint.multiple_of:
            failed = f"must be a multiple of {constraint.multiple_of}"
    elif isinstance(constraint, at.MinLen):
        if len(value) < constraint.min_length:
            failed = f"must have at least {constraint.min_length} item(s)"
    elif isinstance(constraint, at.MaxLen):
        if len(value) > constraint.max_length:
            failed = f"must have at most {constraint.max_length} item(s)"
    elif isinstance(constraint, at.Predicate):
        if constraint.func is math.isfinite:
            failed = None if math.isfinite(value) else "must be finite"
        elif not constraint.func(value):
            failed = f"must satisfy {getattr(constraint.func, '__name__', repr(constraint.func))}"
    elif isinstance(constraint, at.BaseMetadata):
        raise TypeError(f"{_where(path)}: unsupported constraint {constraint!r}")
    # other metadata (documentation strings, markers of other libraries) is not a constraint
    if failed:
        raise RecipeError(f"{_where(path)}: {failed}, got {value!r}")


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
    if origin is Annotated:
        return _type_name(args[0])
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
