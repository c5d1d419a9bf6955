"""Plain data ⇄ typed dataclasses, strictly: the conversion behind recipes, plugin ``Options`` and
the checkpoint and shard metadata.

* :func:`from_dict` builds any dataclass from a mapping.  The checking is pydantic 2's: each dataclass
  gets a :class:`pydantic.TypeAdapter` over a mirror of its fields (a ``TypedDict`` with
  ``ConfigDict(strict=True, extra="forbid")``, built once per class from the dataclass's own
  annotations), and the dataclass is then built from the validated values, so its ``__post_init__``
  runs as usual.  Pydantic's :class:`~pydantic.ValidationError` becomes a
  :class:`~foundation.core.errors.RecipeError` whose message starts with the dotted path of the culprit
  (``train.lr``, ``datasets.0.weight``): ``train.lr: expected float, got str 'fast'``,
  ``train.lrr: unknown key; did you mean 'lr'?``.
* Fields annotated ``Annotated[T, Gt(0), ...]`` (:mod:`annotated_types` constraints: ``Gt``, ``Ge``,
  ``Lt``, ``Le``, ``MultipleOf``, ``MinLen``/``MaxLen`` and ``Predicate``, e.g. ``math.isfinite``) are
  range-checked by pydantic: ``train.lr: must be > 0, got -1.0``.
* :func:`to_dict` is its inverse (plain, JSON/YAML-safe data).

Why strict mode with a few conversions of our own, not pydantic's lax mode: lax mode turns ``"3"`` into
``3``, ``1`` into ``True`` and ``1.0`` into ``1``, and a recipe with ``steps: "10"`` or
``allow_random_weights: 1`` is a mistake we report.  Strict mode alone refuses a few things recipes
rely on, so the mirror adds exactly these before pydantic's strict check (see :func:`_strict`): a list
where a tuple is declared (YAML has no tuples) and a tuple where a list is, any mapping where a dict
is, a string for a path, a decimal string such as ``1e-3`` for a float (PyYAML reads ``1e-3``, without
a dot, as a string), and an unquoted YAML ``no``/``off``/``yes``/``on`` (read as a bool) for a
``Literal`` that allows exactly that word.

Why this file is over 400 lines: the checking is pydantic's, but about half of the file translates its
errors back into the messages users and the tests know (the dotted key, "did you mean", the first culprit
in schema order, a union or a tuple length named as a whole, ranges as ``must be > 0, got -1.0``).

Why :func:`to_dict` is not pydantic's serializer: ``dict[str, Any]`` fields (dataset and guidance
options) may hold anything a plugin accepts; ours refuses a value with no plain form with a
:class:`TypeError` (so no half-plain recipe is hashed or saved), pydantic's would pass it through or
warn.  Recipe hashes are taken over its output and must not move.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar, Union

import annotated_types as at
from pydantic import BeforeValidator, ConfigDict, TypeAdapter, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError
from typing_extensions import NotRequired, Required, TypedDict

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

#: the pydantic configuration of every dataclass mirror: strict types, unknown keys refused, any class
#: allowed as an annotation (checked with isinstance)
_CONFIG = ConfigDict(strict=True, extra="forbid", arbitrary_types_allowed=True)


# ---------------------------------------------------------------------------------------------
# plain data -> dataclass
# ---------------------------------------------------------------------------------------------


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, path: str = "") -> T:
    """Build the dataclass ``cls`` from plain data, validating every key and value (with pydantic).

    Args:
        cls: a dataclass type (``Recipe``, ``TrainConfig``, a plugin's ``Options``...).
        data: a mapping of field name to value; missing keys take the dataclass defaults and
            ``None`` means "all defaults".  An instance of ``cls`` is returned unchanged (so is a
            nested dataclass given as an instance).
        path: dotted path of ``data`` inside the whole recipe, used as a prefix in error
            messages (e.g. ``"datasets.0.options"``).

    Returns:
        A new ``cls`` instance whose fields have the annotated types (ints given to ``float``
        fields become floats, lists given to ``tuple`` fields become tuples).

    Raises:
        RecipeError: an unknown key (with a "did you mean" suggestion), a missing required key,
            a value of the wrong type or out of its declared range, or a value the dataclass's
            ``__post_init__`` rejects.  The message starts with the dotted path of the culprit; when
            several values are wrong it names the first (an unknown key before the values of its
            mapping, then the fields in declaration order).
        TypeError: ``cls`` is not a dataclass or uses an annotation this module cannot check.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    try:
        return _adapter(cls).validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        error = min(errors, key=_error_order(errors))  # the one our message names
        cause = error["ctx"]["error"] if error["type"] == "dataclass_init" else None  # __post_init__'s own
        raise RecipeError(_message(cls, data, error, path)) from cause


@functools.lru_cache(maxsize=None)
def _adapter(cls: type) -> TypeAdapter:
    """The pydantic validator of the dataclass ``cls`` (built once per class)."""
    return TypeAdapter(_strict(cls))


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field annotations of a dataclass, ``Annotated`` constraints kept."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except (NameError, TypeError) as exc:  # an annotation that cannot be resolved: a code bug
        raise TypeError(f"cannot resolve the field annotations of {cls.__qualname__}: {exc}") from exc


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


@functools.lru_cache(maxsize=None)
def _dataclass_mirror(cls: type) -> Any:
    """``cls`` for pydantic: a strict ``TypedDict`` of its init fields (required where the dataclass has
    no default) whose validated value builds ``cls`` itself.  An instance of ``cls`` passes unchanged;
    anything but a mapping is refused (``dataclass_mapping``), and a ``ValueError``/``TypeError`` of the
    dataclass's ``__post_init__`` is reported as ``dataclass_init``."""
    hints = _hints(cls)
    spec = {}
    for name, f in _init_fields(cls).items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        tp = _strict(hints[name])
        spec[name] = Required[tp] if required else NotRequired[tp]
    mirror = TypedDict(f"{cls.__name__}Fields", spec)  # type: ignore[misc]
    mirror.__pydantic_config__ = _CONFIG  # type: ignore[attr-defined]

    def build(value: Any, handler: Any) -> Any:
        if isinstance(value, cls):
            return value
        if value is None:  # a nested ``section: null``: all defaults, as at the top level
            value = {}
        if not isinstance(value, Mapping):
            raise PydanticCustomError("dataclass_mapping", "expected a mapping")
        kwargs = handler(dict(value))
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:  # e.g. a __post_init__ check of a plugin's Options
            raise PydanticCustomError("dataclass_init", "{reason}", {"reason": str(exc), "error": exc}) from exc

    return Annotated[mirror, WrapValidator(build)]


def _strict(tp: Any) -> Any:
    """The annotation ``tp`` as pydantic should check it: the same type, with the conversions strict mode
    lacks added in front (see the module docstring).  ``Annotated`` constraints are kept, so pydantic
    checks them; a dataclass becomes its :func:`_dataclass_mirror`."""
    if tp is Any or tp is object:
        return Any
    if tp is type(None) or tp is None:
        return type(None)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Annotated:
        return Annotated[(_strict(args[0]), *tp.__metadata__)]
    if origin is Union or origin is types.UnionType:
        return Union[tuple(_strict(a) for a in args)]
    if origin is Literal:
        return Annotated[tp, BeforeValidator(functools.partial(_yaml_word, args))]
    if origin is list or origin is Sequence:
        item = _strict(args[0]) if args else Any
        return Annotated[list[item], BeforeValidator(_tuple_to_list)]  # type: ignore[valid-type]
    if origin is tuple:
        if args == ((),):  # tuple[()]: the empty tuple
            inner = tuple[()]
        elif len(args) == 2 and args[1] is Ellipsis:
            inner = tuple[_strict(args[0]), ...]  # type: ignore[misc]
        elif args:
            inner = tuple[tuple(_strict(a) for a in args)]  # type: ignore[misc]
        else:
            inner = tuple[Any, ...]
        return Annotated[inner, BeforeValidator(_list_to_tuple)]
    if origin is dict or origin is Mapping:
        key, val = (_strict(args[0]), _strict(args[1])) if args else (Any, Any)
        return Annotated[dict[key, val], BeforeValidator(_mapping_to_dict)]  # type: ignore[valid-type]
    if origin is not None:
        return _unsupported(tp)

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_mirror(tp)
    if tp is float:
        return Annotated[float, BeforeValidator(_numeric_string)]
    if tp in (bool, int, str):
        return tp
    if isinstance(tp, type) and issubclass(tp, PurePath):
        return Annotated[tp, BeforeValidator(functools.partial(_str_to_path, tp))]
    if isinstance(tp, type):
        return tp  # any other class: an isinstance check (arbitrary_types_allowed)
    return _unsupported(tp)


def _unsupported(tp: Any) -> Any:
    """A field whose annotation this module cannot check: a ``TypeError`` (a code bug) when it is given."""

    def refuse(value: Any) -> Any:
        raise TypeError(f"unsupported annotation {_type_name(tp)}")

    return Annotated[Any, BeforeValidator(refuse)]


def _yaml_word(allowed: tuple[Any, ...], value: Any) -> Any:
    """YAML 1.1 reads an unquoted ``no``/``off``/``yes``/``on`` as a bool: if exactly one allowed string of
    the ``Literal`` is such a spelling of this bool, that is what the user wrote."""
    if isinstance(value, bool) and not any(a is value for a in allowed):
        words = [a for a in allowed if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
        if len(words) == 1:
            return words[0]
    return value


def _numeric_string(value: Any) -> Any:
    if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        return float(value)
    return value


def _tuple_to_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _mapping_to_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) and not isinstance(value, dict) else value


def _str_to_path(tp: type, value: Any) -> Any:
    return tp(value) if isinstance(value, str) else value


# ---------------------------------------------------------------------------------------------
# pydantic's errors -> our messages
# ---------------------------------------------------------------------------------------------


def _message(cls: type, data: Any, error: dict[str, Any], path: str) -> str:
    """One of pydantic's errors about ``data`` (validated as ``cls`` at ``path``), in our words."""
    kind, loc = error["type"], error["loc"]
    spot = _locate(cls, data, loc)
    where = _where(functools.reduce(_join, spot.parts, path))

    if spot.wrong_length:
        return (f"{where}: expected {_type_name(spot.tp)} ({len(_fixed_tuple(spot.tp))} items), "
                f"got {len(spot.value)} items {_short_repr(spot.value)}")
    if spot.union:  # pydantic names each member's complaint; we name the union
        return str(_type_error(where, spot.tp, spot.value))
    if kind == "extra_forbidden":
        return _unknown_key_message(where, spot.parts[-1], list(_init_fields(spot.parent)))
    if kind == "missing":
        return f"{where}: missing required key"
    if kind == "dataclass_mapping":
        return f"{where}: expected a mapping of {_base(spot.tp).__name__} fields, got {_describe(spot.value)}"
    if kind == "dataclass_init":
        return f"{where}: invalid {_base(spot.tp).__name__}: {error['ctx']['reason']}"
    failed = _constraint_failed(kind, spot.tp, spot.value)
    if failed:
        return f"{where}: {failed}, got {_as_float(spot.tp, spot.value)!r}"
    return str(_type_error(where, spot.tp, spot.value))


def _error_order(errors: list[dict[str, Any]]) -> Any:
    """Sort key that puts first the error the message names: pydantic reports the fields of a mapping in
    declaration order (and list items in order) and its unknown keys after them; we name an unknown key
    before the values of its mapping."""
    first_seen: dict[tuple[Any, ...], int] = {}
    for error in errors:
        loc = tuple(error["loc"])
        for depth in range(1, len(loc) + 1):
            first_seen.setdefault(loc[:depth], len(first_seen))

    def key(error: dict[str, Any]) -> tuple[tuple[int, int], ...]:
        loc = tuple(error["loc"])
        last = len(loc) - 1
        return tuple(
            (0 if depth == last and error["type"] == "extra_forbidden" else 1, first_seen[loc[: depth + 1]])
            for depth in range(len(loc))
        )

    return key


@dataclasses.dataclass
class _Spot:
    """Where an error is: key ``parts`` below ``from_dict``'s data, the annotation ``tp`` declared there,
    the ``value`` given there, the dataclass ``parent`` that holds the last key, and whether the walk
    stopped at a union (whose members pydantic reports one by one; we report the union) or at a fixed-length
    tuple given the wrong number of items (pydantic reports the items; we report the length, first)."""

    parts: list[Any]
    tp: Any
    value: Any
    parent: Any = None
    union: bool = False
    wrong_length: bool = False


def _locate(cls: type, data: Any, loc: Sequence[Any]) -> _Spot:
    """Follow pydantic's error location through the annotations of ``cls`` and through ``data``."""
    spot = _Spot(parts=[], tp=cls, value=data)
    key_tp: Any = None
    for part in loc:
        tp = _unwrap(spot.tp, spot.value)
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if part == "[key]" and key_tp is not None:  # a dict key of the wrong type: pydantic's marker
            spot.tp, spot.value, key_tp = key_tp, spot.parts[-1], None
            continue
        key_tp = None
        if origin is Union or origin is types.UnionType:
            spot.union = True  # the next part is pydantic's tag of one member
            break
        fixed = _fixed_tuple(tp)
        if _wrong_length(fixed, spot.value):
            break
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            spot.parent = tp
            spot.tp = _hints(tp).get(part, Any) if part in _init_fields(tp) else Any
        elif origin in (list, Sequence):
            spot.tp = args[0] if args else Any
        elif origin is tuple:
            if len(args) == 2 and args[1] is Ellipsis:
                spot.tp = args[0]
            else:
                spot.tp = fixed[part] if isinstance(part, int) and part < len(fixed) else Any
        elif origin in (dict, Mapping):
            key_tp = args[0] if args else Any
            spot.tp = args[1] if args else Any
        else:
            spot.tp = Any
        spot.value = _item(spot.value, part)
        spot.parts.append(part)
    spot.tp = _unwrap(spot.tp, spot.value, keep_annotated=True)
    spot.wrong_length = not spot.union and _wrong_length(_fixed_tuple(spot.tp), spot.value)
    return spot


def _wrong_length(fixed: tuple[Any, ...], value: Any) -> bool:
    return bool(fixed) and isinstance(value, (list, tuple)) and len(value) != len(fixed)


def _item(container: Any, part: Any) -> Any:
    try:
        return container[part]
    except (KeyError, IndexError, TypeError):
        return None


def _unwrap(tp: Any, value: Any, *, keep_annotated: bool = False) -> Any:
    """``tp`` without ``Annotated`` (unless ``keep_annotated``) and, for a value that is not ``None``,
    without the ``None`` of ``Optional[X]`` (X's own message is the precise one)."""
    while True:
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Annotated and not keep_annotated:
            tp = args[0]
        elif (origin is Union or origin is types.UnionType) and value is not None:
            members = [a for a in args if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _base(tp: Any) -> Any:
    return typing.get_args(tp)[0] if typing.get_origin(tp) is Annotated else tp


def _fixed_tuple(tp: Any) -> tuple[Any, ...]:
    """The item annotations of ``tuple[X, Y, Z]`` (empty for anything else)."""
    tp = _base(tp)
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and args and args != ((),) and not (len(args) == 2 and args[1] is Ellipsis):
        return args
    return ()


def _constraints(tp: Any) -> list[Any]:
    """The :mod:`annotated_types` constraints of an ``Annotated`` annotation, grouped ones flattened."""
    out: list[Any] = []
    for meta in getattr(tp, "__metadata__", ()):
        out.extend(meta if isinstance(meta, at.GroupedMetadata) else [meta])
    return out


#: pydantic's error type -> (annotated_types constraint, attribute holding its bound, our wording)
_BOUNDS = {
    "greater_than": (at.Gt, "gt", ">"),
    "greater_than_equal": (at.Ge, "ge", ">="),
    "less_than": (at.Lt, "lt", "<"),
    "less_than_equal": (at.Le, "le", "<="),
}


def _constraint_failed(kind: str, tp: Any, value: Any) -> str | None:
    """How the value broke a declared constraint, in our words, or ``None`` if the error is not one."""
    declared = _constraints(tp)

    def find(cls: type) -> Any:
        return next((c for c in declared if isinstance(c, cls)), None)

    if kind in _BOUNDS:
        cls, attr, sign = _BOUNDS[kind]
        number = _as_float(tp, value)
        if isinstance(number, float) and math.isnan(number):
            return "must be a number, not NaN"
        bound = find(cls)
        return f"must be {sign} {getattr(bound, attr)}" if bound is not None else None
    if kind == "multiple_of" and find(at.MultipleOf) is not None:
        return f"must be a multiple of {find(at.MultipleOf).multiple_of}"
    if kind == "too_short" and find(at.MinLen) is not None:
        return f"must have at least {find(at.MinLen).min_length} item(s)"
    if kind == "too_long" and find(at.MaxLen) is not None:
        return f"must have at most {find(at.MaxLen).max_length} item(s)"
    if kind == "predicate_failed" and find(at.Predicate) is not None:
        func = find(at.Predicate).func
        return "must be finite" if func is math.isfinite else f"must satisfy {getattr(func, '__name__', repr(func))}"
    return None


def _as_float(tp: Any, value: Any) -> Any:
    """The value as the field holds it: a float field shows ``-1`` (or ``"-1e0"``) as ``-1.0``."""
    if _base(tp) is float and not isinstance(value, bool):
        if isinstance(value, int) or (isinstance(value, str) and _NUMERIC.fullmatch(value.strip())):
            return float(value)
    return value


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
