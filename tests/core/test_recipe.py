"""Tests of foundation.core.recipe: strict dataclass construction, overrides, files and hashing."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
import yaml

from foundation.core.config import DatasetConfig, ModelConfig, Recipe, TrainConfig
from foundation.core.errors import RecipeError
from foundation.core.recipe import (
    apply_overrides,
    from_dict,
    load_recipe,
    parse_override,
    recipe_hash,
    save_recipe,
    to_dict,
    validate_recipe,
)


@dataclasses.dataclass(frozen=True)
class Inner:
    x: int = 1


@dataclasses.dataclass(frozen=True)
class PluginOptions:
    """Stands in for a plugin's Options dataclass: exercises the generic annotations."""

    required: str
    pair: tuple[int, int] = (1, 2)
    many: tuple[float, ...] = ()
    maybe: int | None = None
    table: dict[str, int] = dataclasses.field(default_factory=dict)
    anything: Any = None
    inners: list[Inner] = dataclasses.field(default_factory=list)
    mode: Literal["roi", "volume"] = "roi"

    def __post_init__(self) -> None:
        if self.pair[0] > self.pair[1]:
            raise ValueError(f"pair must be ascending, got {self.pair}")


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --- from_dict / to_dict -------------------------------------------------------------------------


def test_defaults_round_trip() -> None:
    data = to_dict(Recipe())
    assert from_dict(Recipe, data) == Recipe()
    assert from_dict(Recipe, None) == Recipe()
    assert from_dict(Recipe, {}) == Recipe()
    # plain, YAML-safe data: a dict of dicts/lists/scalars that safe_dump accepts
    assert isinstance(data["datasets"], list) and isinstance(data["datasets"][0], dict)
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_missing_keys_take_defaults_and_ints_become_floats() -> None:
    recipe = from_dict(Recipe, {"train": {"lr": 1, "steps": 7}, "model": {"dim": 64}})
    assert recipe.train.lr == 1.0 and isinstance(recipe.train.lr, float)
    assert recipe.train.steps == 7
    assert recipe.train.batch_size == TrainConfig().batch_size
    assert recipe.model.dim == 64 and recipe.model.depth == ModelConfig().depth
    assert isinstance(recipe.datasets[0], DatasetConfig)


def test_unknown_key_names_path_and_suggests() -> None:
    with pytest.raises(RecipeError) as info:
        from_dict(Recipe, {"train": {"lrr": 0.1}})
    message = str(info.value)
    assert "train.lrr" in message
    assert "did you mean 'lr'?" in message


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    with pytest.raises(RecipeError) as info:
        from_dict(Recipe, {"run": {"zzzzzz": 1}})
    message = str(info.value)
    assert "run.zzzzzz" in message
    assert "valid keys" in message and "dir" in message
    assert "did you mean" not in message


def test_unknown_key_inside_list_item() -> None:
    with pytest.raises(RecipeError) as info:
        from_dict(Recipe, {"datasets": [{"plugin": "a"}, {"pluginn": "b"}]})
    assert "datasets.1.pluginn" in str(info.value)
    assert "did you mean 'plugin'?" in str(info.value)
    with pytest.raises(RecipeError, match=r"datasets\.0\.pluginn"):
        from_dict(Recipe, {"datasets": [{"pluginn": "synthetic"}]})


def test_wrong_type_names_path() -> None:
    with pytest.raises(RecipeError) as info:
        from_dict(Recipe, {"train": {"lr": "abc"}})
    assert str(info.value) == "train.lr: expected float, got str 'abc'"
    with pytest.raises(RecipeError, match=r"^datasets\.0\.weight: expected float"):
        from_dict(Recipe, {"datasets": [{"weight": [1]}]})
    with pytest.raises(RecipeError, match=r"^model: expected a mapping"):
        from_dict(Recipe, {"model": 3})
    with pytest.raises(RecipeError, match=r"^datasets: expected list\[DatasetConfig\]"):
        from_dict(Recipe, {"datasets": {"plugin": "synthetic"}})
    with pytest.raises(RecipeError, match=r"^datasets\.0\.subjects\.1: expected str, got int 2"):
        from_dict(Recipe, {"datasets": [{"subjects": ["sub-01", 2]}]})


def test_literal_lists_allowed_values() -> None:
    with pytest.raises(RecipeError) as info:
        from_dict(Recipe, {"model": {"tokens": "everyone"}})
    message = str(info.value)
    assert message.startswith("model.tokens:")
    for allowed in ("'subject'", "'shared'", "'identity'", "'everyone'"):
        assert allowed in message
    assert from_dict(Recipe, {"model": {"tokens": "shared"}}).model.tokens == "shared"


def test_literal_yaml_bool_spelling_maps_back() -> None:
    # YAML 1.1 reads an unquoted `no` as False; mixed_precision allows the string "no".
    raw = yaml.safe_load("train: {mixed_precision: no}")
    assert raw["train"]["mixed_precision"] is False
    assert from_dict(Recipe, raw).train.mixed_precision == "no"
    # model.tokens has no boolean-like spelling: still an error, with a hint to quote
    with pytest.raises(RecipeError, match=r"model\.tokens: .*got bool True.*quote"):
        from_dict(Recipe, {"model": {"tokens": True}})


def test_bool_and_int_strictness() -> None:
    with pytest.raises(RecipeError, match=r"guidance\.allow_random_weights: expected bool, got int 1"):
        from_dict(Recipe, {"guidance": {"allow_random_weights": 1}})
    with pytest.raises(RecipeError, match=r"guidance\.allow_random_weights: expected bool, got str"):
        from_dict(Recipe, {"guidance": {"allow_random_weights": "true"}})
    with pytest.raises(RecipeError, match=r"train\.steps: expected int, got bool True"):
        from_dict(Recipe, {"train": {"steps": True}})
    with pytest.raises(RecipeError, match=r"train\.lr: expected float, got bool False"):
        from_dict(Recipe, {"train": {"lr": False}})
    with pytest.raises(RecipeError, match=r"train\.steps: expected int, got float 10\.0"):
        from_dict(Recipe, {"train": {"steps": 10.0}})
    assert from_dict(Recipe, {"guidance": {"allow_random_weights": True}}).guidance.allow_random_weights is True


def test_numeric_string_accepted_for_float_only() -> None:
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"  # the PyYAML quirk this rule exists for
    recipe = from_dict(Recipe, {"train": {"lr": "1e-3", "max_grad_norm": "2.5E+1"}})
    assert recipe.train.lr == pytest.approx(1e-3) and isinstance(recipe.train.lr, float)
    assert recipe.train.max_grad_norm == 25.0
    for bad in ("nan", "inf", "1e", "0x10", "1_000", ""):
        with pytest.raises(RecipeError, match=r"train\.lr"):
            from_dict(Recipe, {"train": {"lr": bad}})
    with pytest.raises(RecipeError, match=r"train\.steps: expected int, got str '1e3'"):
        from_dict(Recipe, {"train": {"steps": "1e3"}})


def test_optional_fields() -> None:
    recipe = from_dict(Recipe, {"train": {"max_grad_norm": None}, "datasets": [{"subjects": None}]})
    assert recipe.train.max_grad_norm is None and recipe.datasets[0].subjects is None
    with pytest.raises(RecipeError, match=r"run\.dir: expected str, got int 5"):
        from_dict(Recipe, {"run": {"dir": 5}})


def test_generic_plugin_options() -> None:
    opts = from_dict(
        PluginOptions,
        {
            "required": "r",
            "pair": [3, 4],
            "many": [1, 2.5],
            "maybe": 7,
            "table": {"a": 1},
            "anything": {"free": ["form"]},
            "inners": [{"x": 5}, {}],
            "mode": "volume",
        },
        path="datasets.0.options",
    )
    assert opts.pair == (3, 4) and opts.many == (1.0, 2.5)
    assert opts.maybe == 7 and opts.table == {"a": 1} and opts.anything == {"free": ["form"]}
    assert opts.inners == [Inner(5), Inner(1)] and opts.mode == "volume"
    assert to_dict(opts)["pair"] == [3, 4]  # tuples come back as lists
    assert from_dict(PluginOptions, to_dict(opts)) == opts

    cases = {
        "datasets.0.options.required: missing required key": {},
        "datasets.0.options.pair: expected tuple[int, int] (2 items), got 3 items": {"required": "r", "pair": [1, 2, 3]},
        "datasets.0.options.many.1: expected float": {"required": "r", "many": [1, "x"]},
        "datasets.0.options.table.a: expected int": {"required": "r", "table": {"a": "1"}},
        "datasets.0.options.inners.1.y: unknown key": {"required": "r", "inners": [{}, {"y": 1}]},
        "datasets.0.options: invalid PluginOptions: pair must be ascending": {"required": "r", "pair": [5, 1]},
        "datasets.0.options.maybe: expected int": {"required": "r", "maybe": "x"},
    }
    for expected, data in cases.items():
        with pytest.raises(RecipeError) as info:
            from_dict(PluginOptions, data, path="datasets.0.options")
        assert str(info.value).startswith(expected), (expected, str(info.value))


def test_from_dict_rejects_non_dataclass() -> None:
    with pytest.raises(TypeError):
        from_dict(dict, {})  # type: ignore[type-var]


# --- overrides -----------------------------------------------------------------------------------


def test_parse_override() -> None:
    assert parse_override("train.lr=3e-4") == (["train", "lr"], "3e-4")
    assert parse_override("train.steps=10") == (["train", "steps"], 10)
    assert parse_override("run.dir=null") == (["run", "dir"], None)
    assert parse_override("datasets.0.subjects=[sub-01,sub-02]") == (
        ["datasets", "0", "subjects"],
        ["sub-01", "sub-02"],
    )
    assert parse_override("name=a=b") == (["name"], "a=b")
    assert parse_override("name=") == (["name"], "")


@pytest.mark.parametrize("text", ["train.lr", "=3", " =3", "train..lr=3", "train.=3", "x=[1,"])
def test_parse_override_rejects_malformed(text: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_override(text)
    assert repr(text) in str(info.value)


def test_apply_overrides() -> None:
    data = to_dict(Recipe())
    out = apply_overrides(
        data,
        [
            "train.lr=3e-4",
            "model.tokens=shared",
            "datasets.0.options.n_subjects=4",
            "datasets.0.subjects=[sub-01,sub-02]",
            "run.dir=null",
            "guidance.options.clip.batch=8",  # creates nested dicts
            "seed=3",
        ],
    )
    assert out["train"]["lr"] == "3e-4"
    assert out["model"]["tokens"] == "shared"
    assert out["datasets"][0]["options"] == {"n_subjects": 4}
    assert out["datasets"][0]["subjects"] == ["sub-01", "sub-02"]
    assert out["run"]["dir"] is None
    assert out["guidance"]["options"] == {"clip": {"batch": 8}}
    assert out["seed"] == 3
    assert data == to_dict(Recipe())  # the input is not modified

    recipe = from_dict(Recipe, out)
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.model.tokens == "shared"
    assert recipe.datasets[0].subjects == ["sub-01", "sub-02"]

    # a later override wins; a new key passes apply_overrides but from_dict catches it
    assert apply_overrides({"a": 1}, ["a=2", "a=3"]) == {"a": 3}
    with pytest.raises(RecipeError, match=r"train\.lrr: unknown key; did you mean 'lr'"):
        from_dict(Recipe, apply_overrides(data, ["train.lrr=1"]))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("datasets.5.weight=2", "out of range"),
        ("datasets.x.weight=2", "must be an index"),
        ("datasets.-1.weight=2", "must be an index"),
        ("train.lr.x=1", "train.lr"),
        ("seed.x=1", "int 0"),
        ("nonsense", "KEY=VALUE"),
    ],
)
def test_apply_overrides_rejects_bad(override: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        apply_overrides(to_dict(Recipe()), [override])
    assert repr(override) in str(info.value)
    assert fragment in str(info.value)


# --- files ---------------------------------------------------------------------------------------


RECIPE_YAML = """\
seed: 3
datasets:
  - plugin: synthetic
    name: alpha
    weight: 2
    options: {n_subjects: 4}
  - plugin: synthetic
    name: beta
model:
  dim: 64
  heads: 8
train:
  lr: 1e-3
  steps: 100
"""


def test_load_recipe_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, RECIPE_YAML)
    recipe = load_recipe(path)
    assert recipe.name == "exp"  # no name in the file: the file stem
    assert recipe.seed == 3
    assert [d.id for d in recipe.datasets] == ["alpha", "beta"]
    assert recipe.datasets[0].weight == 2.0 and recipe.datasets[0].options == {"n_subjects": 4}
    assert recipe.train.lr == pytest.approx(1e-3)
    assert recipe.model.dim == 64 and recipe.model.depth == ModelConfig().depth

    recipe = load_recipe(
        str(path),
        [
            "train.lr=3e-4",
            "name=renamed",
            "datasets.1.options.n_subjects=2",
            "datasets.0.subjects=[sub-01,sub-02]",
            "model.tokens=identity",
        ],
    )
    assert recipe.name == "renamed"
    assert recipe.train.lr == pytest.approx(3e-4)
    assert recipe.datasets[1].options == {"n_subjects": 2}
    assert recipe.datasets[0].subjects == ["sub-01", "sub-02"]
    assert recipe.model.tokens == "identity"
    assert recipe.train.steps == 100  # untouched values survive


def test_load_recipe_override_on_defaults(tmp_path: Path) -> None:
    # The file relies on the default dataset list; the override still finds datasets.0.
    path = write(tmp_path, "name: tiny\n")
    recipe = load_recipe(path, ["datasets.0.weight=0.5", "train.mixed_precision=no"])
    assert recipe.name == "tiny"
    assert recipe.datasets[0].weight == 0.5
    assert recipe.train.mixed_precision == "no"


def test_load_recipe_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(missing)

    path = write(tmp_path, "- just\n- a list\n", "list.yaml")
    with pytest.raises(RecipeError, match=r"list\.yaml: .*mapping"):
        load_recipe(path)

    path = write(tmp_path, "train:\n  lrr: 1\n", "typo.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert "typo.yaml" in str(info.value) and "train.lrr" in str(info.value)

    path = write(tmp_path, RECIPE_YAML)
    with pytest.raises(RecipeError, match=r"train\.steps: expected int.*train\.steps=ten"):
        load_recipe(path, ["train.steps=ten"])
    with pytest.raises(RecipeError, match=r"'datasets\.9\.weight=1'.*out of range"):
        load_recipe(path, ["datasets.9.weight=1"])


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\ntrain:\n  lr: [1, 2\nmodel: {}\n", "broken.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "line 4" in message


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    recipe = load_recipe(
        write(tmp_path, RECIPE_YAML),
        ["run.dir=runs/x", "train.max_grad_norm=null", "datasets.0.subjects=[sub-01]", "train.mixed_precision=no"],
    )
    out = tmp_path / "sub" / "resolved.yaml"
    save_recipe(recipe, out)
    assert load_recipe(out) == recipe
    assert yaml.safe_load(out.read_text())["datasets"][0]["name"] == "alpha"
    # key order follows the schema (sort_keys=False)
    assert list(yaml.safe_load(out.read_text())) == [f.name for f in dataclasses.fields(Recipe)]
    assert load_recipe(out).train.mixed_precision == "no"
    # the default recipe round trips too
    save_recipe(Recipe(), out)
    assert load_recipe(out) == Recipe()


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "recipe.yaml"
    out.write_text("old content\n")
    os.chmod(out, 0o640)
    save_recipe(Recipe(name="first"), out)
    save_recipe(Recipe(name="second"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    assert load_recipe(out).name == "second"
    assert out.stat().st_mode & 0o777 == 0o640  # the replaced file's mode is kept

    # a failing dump leaves the old file untouched and no temp file behind
    class Weird:
        pass

    bad = Recipe(name="bad")
    bad.datasets[0].options = {"x": Weird()}
    with pytest.raises(TypeError):
        save_recipe(bad, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]
    assert load_recipe(out).name == "second"


# --- hashing and cross-field checks --------------------------------------------------------------


def test_recipe_hash() -> None:
    a = {"x": 1, "y": {"p": [1, 2], "q": "s"}}
    b = {"y": {"q": "s", "p": [1, 2]}, "x": 1}
    assert recipe_hash(a) == recipe_hash(b)
    assert len(recipe_hash(a)) == 16 and int(recipe_hash(a), 16) >= 0
    assert recipe_hash(a) != recipe_hash({"x": 2, "y": {"p": [1, 2], "q": "s"}})
    assert recipe_hash(a) != recipe_hash({"x": 1, "y": {"p": [2, 1], "q": "s"}})

    assert recipe_hash(Recipe()) == recipe_hash(to_dict(Recipe()))
    assert recipe_hash(Recipe()) == recipe_hash(from_dict(Recipe, to_dict(Recipe())))
    assert recipe_hash(Recipe()) != recipe_hash(Recipe(seed=1))
    # a known value pins the canonical form: sorted keys, no spaces, sha256, 16 hex digits
    import hashlib

    assert recipe_hash({"b": 1, "a": [True, None]}) == hashlib.sha256(
        b'{"a":[true,null],"b":1}'
    ).hexdigest()[:16]


def test_duplicate_dataset_ids_rejected(tmp_path: Path) -> None:
    text = "datasets:\n  - {plugin: synthetic}\n  - {plugin: other, name: synthetic}\n"
    with pytest.raises(RecipeError) as info:
        load_recipe(write(tmp_path, text))
    assert "duplicate dataset id 'synthetic'" in str(info.value)
    assert "datasets.1" in str(info.value)
    # distinct names make the same plugin usable twice
    text = "datasets:\n  - {plugin: synthetic, name: a}\n  - {plugin: synthetic, name: b}\n"
    assert [d.id for d in load_recipe(write(tmp_path, text)).datasets] == ["a", "b"]


def test_cross_field_checks() -> None:
    validate_recipe(Recipe())  # defaults are valid

    def check(fragment: str, **changes: Any) -> None:
        recipe = Recipe()
        for dotted, value in changes.items():
            section, name = dotted.split("__")
            setattr(getattr(recipe, section), name, value)
        with pytest.raises(RecipeError, match=fragment):
            validate_recipe(recipe)

    check(r"model\.dim: 130 is not divisible by model\.heads=4", model__dim=130)
    check(r"model\.heads: must be > 0", model__heads=0)
    check(r"model\.dim: must be > 0", model__dim=-4)
    check(r"model\.depth: must be > 0", model__depth=0)
    check(r"train\.batch_size: must be > 0", train__batch_size=0)
    check(r"train\.steps: must be > 0", train__steps=0)

    recipe = Recipe()
    recipe.datasets[0].weight = 0.0
    with pytest.raises(RecipeError, match=r"datasets\.0\.weight: must be"):
        validate_recipe(recipe)
    with pytest.raises(RecipeError, match="at least one dataset"):
        validate_recipe(Recipe(datasets=[]))


def test_load_recipe_runs_cross_field_checks(tmp_path: Path) -> None:
    path = write(tmp_path, "model: {dim: 100, heads: 3}\n")
    with pytest.raises(RecipeError, match=r"exp\.yaml: model\.dim: 100 is not divisible"):
        load_recipe(path)
    assert load_recipe(path, ["model.heads=4"]).model.heads == 4
    with pytest.raises(RecipeError, match="at least one dataset"):
        load_recipe(path, ["datasets=[]", "model.heads=4"])


def test_optional_annotation_styles() -> None:
    @dataclasses.dataclass
    class Local:
        a: Optional[int] = None
        b: "list[str] | None" = None

    # Local class in a test function: annotations reference only builtins, so they resolve.
    assert from_dict(Local, {"a": 1, "b": ["x"]}) == Local(1, ["x"])
    with pytest.raises(RecipeError, match=r"^opts\.b\.0: expected str"):
        from_dict(Local, {"b": [1]}, path="opts")


def test_messages_that_pydantic_reports_differently_keep_ours() -> None:
    """from_dict validates with pydantic; these are the cases whose raw pydantic errors differ from our
    messages (a union's members one by one, tuple items instead of its length, unknown keys last, a
    dict key's marker), pinned to what the hand-written checker said before pydantic took over."""

    @dataclasses.dataclass
    class Opts:
        ids: list[str | int] = dataclasses.field(default_factory=list)
        grid: tuple[int, int, int] = (1, 2, 3)
        table: dict[str, float] = dataclasses.field(default_factory=dict)

    with pytest.raises(RecipeError, match=r"^o\.ids\.1: expected str \| int, got bool True \(YAML reads"):
        from_dict(Opts, {"ids": ["a", True]}, path="o")
    with pytest.raises(RecipeError, match=r"^o\.grid: expected tuple\[int, int, int\] \(3 items\), got 2 items \['a', 2\]$"):
        from_dict(Opts, {"grid": ["a", 2]}, path="o")
    with pytest.raises(RecipeError, match=r"^o\.table\.1: expected str, got int 1"):
        from_dict(Opts, {"table": {1: 2.0}}, path="o")
    assert from_dict(Opts, {"ids": ["100307", 100408], "table": {"a": "1e-3"}}) == Opts(["100307", 100408], table={"a": 1e-3})
    # an unknown key is named before a wrong value of the same mapping, and the fields in schema order
    with pytest.raises(RecipeError, match=r"^train\.lrr: unknown key"):
        from_dict(Recipe, {"train": {"lr": "x", "lrr": 1}})
    with pytest.raises(RecipeError, match=r"^seed: expected int"):
        from_dict(Recipe, {"run": {"dirr": 1}, "seed": "x", "train": {"lrr": 1}})
    # a section given as null takes its defaults (as a recipe given as null does)
    assert from_dict(Recipe, {"train": None, "datasets": [None]}) == Recipe()
    # ints and numeric strings given to floats are floats; bools are never numbers
    assert from_dict(Recipe, {"train": {"lr": "2"}}).train.lr == 2.0
    with pytest.raises(RecipeError, match=r"^train\.lr: must be > 0, got -1\.0$"):
        from_dict(Recipe, {"train": {"lr": "-1"}})


def test_from_dict_uses_pydantic() -> None:
    """The check is pydantic's (a strict TypeAdapter per dataclass), not a hand-written one."""
    from pydantic import TypeAdapter

    from foundation.core import convert

    assert isinstance(convert._adapter(Recipe), TypeAdapter)
    assert convert._adapter(Recipe) is convert._adapter(Recipe)  # built once per class
