"""Load, validate, override, save and hash recipes.

A recipe is a YAML file that maps one-to-one onto :class:`foundation.core.config.Recipe`.  Plain data
(what :func:`yaml.safe_load` returns) becomes those typed dataclasses through
:func:`foundation.core.convert.from_dict`, which validates it with pydantic (and back through
:func:`~foundation.core.convert.to_dict`):

* :func:`parse_override` / :func:`apply_overrides` implement command-line overrides such as
  ``train.lr=3e-4`` or ``datasets.0.subjects=[sub-01,sub-02]``.
* :func:`load_recipe` / :func:`save_recipe` read and (atomically) write recipe files;
  :func:`validate_recipe` checks the facts that span several fields.
* :func:`recipe_hash` is a short, stable content hash.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from foundation.core.atomic import atomic_open
from foundation.core.config import Recipe
from foundation.core.convert import _describe, _plain, from_dict, to_dict
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


#: the most scalars and collections a recipe may expand to once its aliases (``*name``) are followed;
#: a "billion laughs" document of 2 kB expands to billions and took minutes and gigabytes to report
MAX_EXPANDED_NODES = 100_000


class _StrictLoader(yaml.SafeLoader):
    """:class:`yaml.SafeLoader` that refuses a key given twice in one mapping (YAML says keys are unique;
    PyYAML would silently keep the last one) and a document whose aliases expand beyond
    :data:`MAX_EXPANDED_NODES` nodes."""

    def construct_document(self, node):
        sizes: dict[int, int] = {}

        def expanded(n) -> int:  # size of the tree the alias graph stands for, memoised per node
            if id(n) not in sizes:
                sizes[id(n)] = 0  # a recursive alias counts once (PyYAML builds the cycle)
                if isinstance(n, yaml.SequenceNode):
                    total = 1 + sum(expanded(c) for c in n.value)
                elif isinstance(n, yaml.MappingNode):
                    total = 1 + sum(expanded(k) + expanded(v) for k, v in n.value)
                else:
                    total = 1
                sizes[id(n)] = min(total, MAX_EXPANDED_NODES + 1)
            return sizes[id(n)]

        if expanded(node) > MAX_EXPANDED_NODES:
            raise yaml.constructor.ConstructorError(
                None, None, f"the document expands to more than {MAX_EXPANDED_NODES} values once its aliases "
                f"(*name) are followed; a recipe is small (is this an alias bomb?)", node.start_mark)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {key!r} (first at line {seen[key].start_mark.line + 1}); "
                        f"a key may appear once", key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


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
        loader = _StrictLoader(text)  # a SafeLoader: what yaml.safe_load does, plus the checks above
        try:
            raw = loader.get_single_data()
        finally:
            loader.dispose()
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

    Checks: every range declared on the schema's fields (``Annotated`` constraints, see
    :mod:`foundation.core.config`: also for a recipe built or changed in code), the recipe name and dataset
    names are identifiers (they become directory names: never a path), at least one dataset, unique
    dataset ids, no empty or repeated subject list, ``model.backbone: mlp`` only with shared tokens, and
    ``model.dim`` divisible by ``model.heads``.
    """
    from_dict(Recipe, to_dict(recipe))  # the field ranges, with their dotted-path messages
    _check_identifier("name", recipe.name)
    if not recipe.datasets:
        raise RecipeError("datasets: a recipe needs at least one dataset")
    seen: dict[str, int] = {}
    for i, ds in enumerate(recipe.datasets):
        if ds.name is not None:
            _check_identifier(f"datasets.{i}.name", ds.name)
        if ds.id in seen:
            raise RecipeError(
                f"datasets.{i}: duplicate dataset id {ds.id!r} (also datasets.{seen[ds.id]}); "
                "give each dataset a distinct 'name'"
            )
        seen[ds.id] = i
        if ds.subjects is not None and not ds.subjects:
            raise RecipeError(f"datasets.{i}.subjects: an empty list selects no subject; leave it out (or null) "
                              f"for all of the dataset's subjects")
        if ds.subjects is not None and len(set(ds.subjects)) != len(ds.subjects):
            dupes = sorted({s for s in ds.subjects if ds.subjects.count(s) > 1})
            raise RecipeError(f"datasets.{i}.subjects: duplicate subject id(s) {dupes}")

    if recipe.model.backbone == "mlp" and recipe.model.tokens != "shared":
        raise RecipeError(f"model.backbone: 'mlp' reads no tokens; it needs model.tokens=shared, "
                          f"got {recipe.model.tokens!r}")
    if recipe.model.dim % recipe.model.heads:
        raise RecipeError(
            f"model.dim: {recipe.model.dim} is not divisible by model.heads={recipe.model.heads}"
        )


#: what a name that becomes a directory name may look like: no path separator, no leading dot
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _check_identifier(key: str, value: str) -> None:
    """``value`` (the recipe's ``name``, a dataset's ``name``) must be an identifier, never a path."""
    if not _IDENTIFIER.fullmatch(value) or ".." in value:
        raise RecipeError(f"{key}: {value!r} is not a valid name: use letters, digits and _ . + - (starting with "
                          f"a letter or digit, no '..', at most 100 characters); it names directories, "
                          f"so it cannot be a path (set run.dir or shards.root for where things go)")


def with_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe (the dict of a run's ``config.yaml`` or an archived ``recipe.yaml``) as today's schema
    reads it: every key added since it was written takes its default, which is what runs before that key did.
    Returned as written when it no longer parses (the caller then reports the difference key by key)."""
    try:
        return to_dict(from_dict(Recipe, data))
    except (RecipeError, TypeError):
        return data


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
