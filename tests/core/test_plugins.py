"""Plugin discovery, registries and error naming (foundation.core.plugins, foundation.core.hookspecs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from foundation.core import plugins
from foundation.core.api import DatasetInfo, DatasetPlugin, GuidanceFeatures, GuidancePlugin
from foundation.core.errors import PluginError
from foundation.core.hookspecs import hookimpl

EXTERNAL_PLUGIN = Path(__file__).parents[1] / "external_plugin"


@pytest.fixture(autouse=True)
def fresh_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test discovers plugins afresh; the previous cache is restored afterwards."""
    monkeypatch.setattr(plugins, "_manager", None)


# ---------------------------------------------------------------- fake plugin packages


class _Dataset(DatasetPlugin):
    name = "fake-dataset"

    def info(self) -> DatasetInfo:  # pragma: no cover - never called
        raise NotImplementedError

    def samples(self, subject):  # pragma: no cover
        return iter(())

    def stimuli(self, ids):  # pragma: no cover
        return iter(())


class _Guidance(GuidancePlugin):
    name = "fake-guidance"

    def encode(self, stimuli) -> GuidanceFeatures:  # pragma: no cover
        raise NotImplementedError


def _fake_module(monkeypatch: pytest.MonkeyPatch, module_name: str, **hooks: Callable) -> None:
    """Put a module with the given @hookimpl functions into sys.modules (undone after the test)."""
    module = types.ModuleType(module_name)
    for hook_name, fn in hooks.items():
        fn.__name__ = hook_name
        setattr(module, hook_name, hookimpl(fn))
    monkeypatch.setitem(sys.modules, module_name, module)


def _only_entry_points(monkeypatch: pytest.MonkeyPatch, **eps: str) -> None:
    """Make discovery see exactly these ``name=module`` entry points instead of the installed ones."""
    fake = [EntryPoint(name=n, value=v, group="foundation") for n, v in eps.items()]
    monkeypatch.setattr(plugins, "_entry_points", lambda: fake)


# ---------------------------------------------------------------- (1) built-ins


def test_builtin_plugins_are_discovered_through_the_entry_point() -> None:
    datasets, guidance = plugins.dataset_plugins(), plugins.guidance_plugins()
    assert "synthetic" in datasets and "planted" in guidance
    for entry in (datasets["synthetic"], guidance["planted"]):
        assert entry.origin.startswith("foundation ")
        assert "foundation_synthetic.plugin" in entry.origin
    assert plugins.get_dataset_plugin("synthetic") is datasets["synthetic"].cls
    assert issubclass(plugins.get_guidance_plugin("planted"), GuidancePlugin)
    table = plugins.plugin_table()
    assert table.splitlines()[0].split() == ["KIND", "NAME", "ORIGIN", "DESCRIPTION"]
    assert any(line.startswith("dataset") and " synthetic " in line for line in table.splitlines())


def test_plugin_manager_is_cached_and_refreshable() -> None:
    pm = plugins.get_plugin_manager()
    assert plugins.get_plugin_manager() is pm
    assert plugins.get_plugin_manager(refresh=True) is not pm


# ---------------------------------------------------------------- (2) a real third-party package


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """pip-install tests/external_plugin (offline) into a temporary --target directory."""
    tmp = tmp_path_factory.mktemp("external_plugin")
    src = tmp / "src"  # build from a copy so setuptools leaves nothing in the source tree
    shutil.copytree(EXTERNAL_PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
           "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target), str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pip install failed:\n{proc.stdout}\n{proc.stderr}"
    yield target


CHILD = textwrap.dedent(
    """
    from foundation.core import plugins
    print(plugins.plugin_table())
    D = plugins.get_dataset_plugin("example-dataset")
    ds = D(D.Options(), root=None, seed=3)
    info = ds.info()
    sample = next(ds.samples(info.subjects[0]))
    stim = next(ds.stimuli([sample.stimulus]))
    G = plugins.get_guidance_plugin("example-guidance")
    feats = G(G.Options()).encode([stim])
    print("SAMPLE", info.subjects, sample.fmri.shape, sample.fmri.dtype, info.num_labels)
    print("FEATURES", feats.low.shape, feats.high.shape)
    """
)


def test_external_package_installs_and_registers(installed_example: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed_example))
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rows = {line.split()[1]: line for line in lines if line.startswith(("dataset", "guidance"))}
    for kind, name in (("dataset", "example-dataset"), ("guidance", "example-guidance")):
        assert rows[name].startswith(kind)
        assert "foundation-example-plugin 0.1.0" in rows[name]
        assert "foundation_example_plugin.plugin" in rows[name]
    assert "synthetic" in rows  # the built-ins are still there
    assert "SAMPLE ('ex1', 'ex2') (3, 4) float32 2" in lines
    assert "FEATURES (1, 8) (1, 4)" in lines


# ---------------------------------------------------------------- (3)-(7) failures name the culprit


def test_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    _only_entry_points(monkeypatch, broken="no_such_module_xyz")
    with pytest.raises(PluginError, match=r"'broken'.*no_such_module_xyz") as err:
        plugins.get_plugin_manager()
    assert isinstance(err.value.__cause__, ModuleNotFoundError)


def test_register_module_names_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    _only_entry_points(monkeypatch)
    with pytest.raises(PluginError, match="no_such_module_xyz.*named explicitly"):
        plugins.register_module("no_such_module_xyz")
    _fake_module(monkeypatch, "fake_explicit", foundation_dataset_plugins=lambda: [_Dataset])
    plugins.register_module("fake_explicit")
    plugins.register_module("fake_explicit")  # naming it twice is harmless
    assert plugins.dataset_plugins()["fake-dataset"].origin == "module fake_explicit (named explicitly)"


def test_plugin_whose_hook_raises_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> list:
        raise RuntimeError("kaboom")

    _fake_module(monkeypatch, "fake_raising", foundation_guidance_plugins=boom)
    _only_entry_points(monkeypatch, raiser="fake_raising")
    with pytest.raises(PluginError, match=r"'raiser'.*fake_raising.*foundation_guidance_plugins.*kaboom") as err:
        plugins.guidance_plugins()
    assert isinstance(err.value.__cause__, RuntimeError)


@pytest.mark.parametrize("returned", [[dict], [_Guidance], ["fake-dataset"]])
def test_hook_returning_a_non_plugin_class_is_named(monkeypatch: pytest.MonkeyPatch, returned: list) -> None:
    _fake_module(monkeypatch, "fake_wrong", foundation_dataset_plugins=lambda: returned)
    _only_entry_points(monkeypatch, wrong="fake_wrong")
    with pytest.raises(PluginError, match=r"'wrong'.*fake_wrong.*not a subclass of foundation.core.api.DatasetPlugin"):
        plugins.dataset_plugins()


def test_plugin_class_without_name_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    nameless = type("Nameless", (_Dataset,), {"name": ""})
    _fake_module(monkeypatch, "fake_nameless", foundation_dataset_plugins=lambda: [nameless])
    _only_entry_points(monkeypatch, nameless="fake_nameless")
    with pytest.raises(PluginError, match=r"'nameless'.*Nameless.*non-empty string"):
        plugins.dataset_plugins()


def test_duplicate_names_are_rejected_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    twin = type("Twin", (_Dataset,), {})  # same name "fake-dataset", different class
    _fake_module(monkeypatch, "fake_first", foundation_dataset_plugins=lambda: [_Dataset])
    _fake_module(monkeypatch, "fake_second", foundation_dataset_plugins=lambda: [twin])
    _only_entry_points(monkeypatch, first="fake_first", second="fake_second")
    with pytest.raises(PluginError, match="'fake-dataset'") as err:
        plugins.dataset_plugins()
    message = str(err.value)
    assert "'first' → fake_first" in message and "'second' → fake_second" in message


def test_unknown_name_suggests_the_closest(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(
        monkeypatch, "fake_ok",
        foundation_dataset_plugins=lambda: [_Dataset],
        foundation_guidance_plugins=lambda: [_Guidance],
    )
    _only_entry_points(monkeypatch, ok="fake_ok")
    with pytest.raises(PluginError, match=r"did you mean 'fake-dataset'\?.*fake-dataset"):
        plugins.get_dataset_plugin("fake-datset")
    with pytest.raises(PluginError, match=r"unknown guidance plugin 'zzz'\. Registered guidance plugins: fake-guidance"):
        plugins.get_guidance_plugin("zzz")
    assert plugins.get_guidance_plugin("fake-guidance") is _Guidance
    assert len(plugins.plugin_table().splitlines()) == 3  # header + 2 rows
