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


def test_plugin_that_fails_to_import_is_listed_and_named_when_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_module(monkeypatch, "fake_ok", foundation_dataset_plugins=lambda: [_Dataset])
    _only_entry_points(monkeypatch, broken="no_such_module_xyz", ok="fake_ok")
    pm = plugins.get_plugin_manager()  # discovery goes on past the broken package
    assert list(pm.broken) == ["broken"]
    assert plugins.get_dataset_plugin("fake-dataset") is _Dataset  # the others work
    rows = plugins.plugin_table().splitlines()
    assert rows[-1].startswith("broken") and "'broken' → no_such_module_xyz" in rows[-1]
    assert "failed to import: ModuleNotFoundError" in rows[-1]
    with pytest.raises(PluginError, match=r"unknown dataset plugin 'toybold'.*could not be loaded and may "
                                          r"provide it.*'broken'.*no_such_module_xyz") as err:
        plugins.get_dataset_plugin("toybold")
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

    _fake_module(monkeypatch, "fake_raising", foundation_guidance_plugins=boom,
                 foundation_dataset_plugins=lambda: [_Dataset])
    _only_entry_points(monkeypatch, raiser="fake_raising")
    assert plugins.guidance_plugins() == {}  # left out, not fatal
    assert plugins.get_dataset_plugin("fake-dataset") is _Dataset  # its working hook still counts
    with pytest.raises(PluginError, match=r"'raiser'.*fake_raising.*foundation_guidance_plugins.*kaboom") as err:
        plugins.get_guidance_plugin("fake-guidance")
    assert isinstance(err.value.__cause__, RuntimeError)
    assert "kaboom" in plugins.plugin_table().splitlines()[-1]


@pytest.mark.parametrize("returned", [[dict], [_Guidance], ["fake-dataset"]])
def test_hook_returning_a_non_plugin_class_is_named(monkeypatch: pytest.MonkeyPatch, returned: list) -> None:
    _fake_module(monkeypatch, "fake_wrong", foundation_dataset_plugins=lambda: returned)
    _only_entry_points(monkeypatch, wrong="fake_wrong")
    with pytest.raises(PluginError, match=r"'wrong'.*fake_wrong.*not a subclass of foundation.core.api.DatasetPlugin"):
        plugins.get_dataset_plugin("fake-dataset")


def test_plugin_class_without_name_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    nameless = type("Nameless", (_Dataset,), {"name": ""})
    _fake_module(monkeypatch, "fake_nameless", foundation_dataset_plugins=lambda: [nameless])
    _only_entry_points(monkeypatch, nameless="fake_nameless")
    with pytest.raises(PluginError, match=r"'nameless'.*Nameless.*non-empty string"):
        plugins.get_dataset_plugin("fake-dataset")


def test_duplicate_names_are_rejected_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    twin = type("Twin", (_Dataset,), {})  # same name "fake-dataset", different class
    _fake_module(monkeypatch, "fake_first", foundation_dataset_plugins=lambda: [_Dataset])
    _fake_module(monkeypatch, "fake_second", foundation_dataset_plugins=lambda: [twin])
    _only_entry_points(monkeypatch, first="fake_first", second="fake_second")
    assert "fake-dataset" not in plugins.dataset_plugins()  # neither is picked silently
    with pytest.raises(PluginError, match="'fake-dataset'") as err:
        plugins.get_dataset_plugin("fake-dataset")
    message = str(err.value)
    assert "'first' → fake_first" in message and "'second' → fake_second" in message
    assert plugins.plugin_table().splitlines()[-1].split()[:2] == ["broken", "fake-dataset"]


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


def test_an_installed_broken_package_breaks_only_what_needs_it(tmp_path: Path) -> None:
    """A distribution whose plugin module cannot import (a missing dependency), installed in a temporary
    site folder: `foundation plugins` lists it as broken, `foundation shard` of a recipe that does not
    use it works, and a recipe naming a plugin it may provide fails naming it."""
    import yaml

    from tests.conftest import tiny_recipe_dict

    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[foundation]\ntoybold = broken_plugin.plugin\n")
    (site / "broken_plugin").mkdir()
    (site / "broken_plugin" / "__init__.py").write_text("")
    (site / "broken_plugin" / "plugin.py").write_text("import no_such_dependency_xyz  # noqa\n")
    env = dict(os.environ, PYTHONPATH=str(site))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "foundation", *args], capture_output=True, text=True,
                              env=env, timeout=300)

    proc = run("plugins")
    assert proc.returncode == 1, proc.stderr  # listed, and the exit status says something is broken
    assert "cannot be used: toybold" in proc.stderr
    rows = {line.split()[1]: line for line in proc.stdout.splitlines()[1:]}
    assert rows["toybold"].startswith("broken") and "broken-plugin 0.1.0" in rows["toybold"]
    assert "ModuleNotFoundError" in rows["toybold"] and "no_such_dependency_xyz" in rows["toybold"]
    assert rows["synthetic"].startswith("dataset")

    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(tiny_recipe_dict(tmp_path)))
    proc = run("shard", str(good), "--no-progress")
    assert proc.returncode == 0, proc.stderr

    d = tiny_recipe_dict(tmp_path)
    d["datasets"][0]["plugin"] = "toybold"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(d))
    proc = run("shard", str(bad), "--no-progress")
    assert proc.returncode == 2
    assert "unknown dataset plugin 'toybold'" in proc.stderr and "broken-plugin 0.1.0" in proc.stderr
    assert "no_such_dependency_xyz" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- foundation plugins --check NAME


def test_check_passes_the_worked_example(installed_example: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(installed_example))
    for name, expected in (("example-dataset", ["info(): roi, token_shape (3, 4), 2 labels, 2 subjects (ex1, ex2)",
                                                "samples('ex2'): the first 3 pass the shard checks",
                                                "stimuli(): 3 returned in order (image (8, 8, 3) uint8, text)",
                                                "encode_raw: implemented (predict --raw): (N, V_s)"]),
                           ("example-guidance", ["encode(): low (3, 8), high (3, 4), finite, the same on a second call",
                                                 "'salt': 'example'"])):
        proc = subprocess.run([sys.executable, "-m", "foundation", "plugins", "--check", name, "--samples", "3"],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        for text in expected:
            assert text in proc.stdout, (text, proc.stdout)
        assert proc.stdout.splitlines()[-1].startswith(f"ok: '{name}' passed")


def test_check_fails_naming_the_sample_or_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from foundation.core.api import Sample, Stimulus
    from foundation.core.errors import DataError
    from foundation.workflows.plugin_check import check_plugin

    class Wide(_Dataset):
        name = "wide"

        def info(self) -> DatasetInfo:
            return DatasetInfo(kind="roi", label_names=("a",), subjects=("s1",), token_shape=(2, 3))

        def samples(self, subject):
            for i in range(3):
                yield Sample(subject=subject, index=i, split="train", stimulus=f"x{i}",
                             fmri=np.zeros((2, 3 if i < 2 else 4)), labels=np.array([1]))

        def stimuli(self, ids):
            return (Stimulus(id=i, text="t") for i in ids)

    class Moody(_Guidance):
        name = "moody"
        calls = 0

        def encode(self, stimuli) -> GuidanceFeatures:
            Moody.calls += 1
            n = len(stimuli)
            return GuidanceFeatures(low=np.full((n, 2), Moody.calls, np.float32), high=np.zeros((n, 2), np.float32))

    _fake_module(monkeypatch, "fake_checked", foundation_dataset_plugins=lambda: [Wide],
                 foundation_guidance_plugins=lambda: [Moody])
    _only_entry_points(monkeypatch, checked="fake_checked")
    assert check_plugin("wide", samples=2)[-1].startswith("ok: 'wide' passed")
    with pytest.raises(DataError, match=r"sample wide/s1/0000002: fMRI has shape \(2, 4\), expected \(2, 3\)"):
        check_plugin("wide", samples=3)
    monkeypatch.setattr(plugins, "_manager", None)
    from foundation_synthetic.plugin import SyntheticDataset  # a guidance check encodes its stimuli

    _fake_module(monkeypatch, "fake_synth", foundation_dataset_plugins=lambda: [SyntheticDataset])
    _only_entry_points(monkeypatch, checked="fake_checked", synth="fake_synth")
    with pytest.raises(PluginError, match="'moody' is not deterministic"):
        check_plugin("moody", samples=2)


def test_hooks_are_called_through_pluggy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each package's hook goes through pluggy's hook caller (so pluggy's tracing and call monitoring see
    it), one package at a time (so a failure is that package's alone)."""
    _fake_module(monkeypatch, "fake_ok", foundation_dataset_plugins=lambda: [_Dataset])
    _fake_module(monkeypatch, "fake_other", foundation_guidance_plugins=lambda: [_Guidance])
    _only_entry_points(monkeypatch, ok="fake_ok", other="fake_other")
    pm = plugins.get_plugin_manager()
    calls: list[tuple[str, list[str]]] = []
    undo = pm.add_hookcall_monitoring(lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])),
                                      lambda outcome, name, impls, kwargs: None)
    try:
        assert plugins.get_dataset_plugin("fake-dataset") is _Dataset
        assert plugins.get_guidance_plugin("fake-guidance") is _Guidance
    finally:
        undo()
    assert calls == [("foundation_dataset_plugins", ["ok"]), ("foundation_guidance_plugins", ["other"])]


def test_cli_plugins_exits_1_when_a_package_is_broken(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from foundation.cli import main

    _fake_module(monkeypatch, "fake_ok", foundation_dataset_plugins=lambda: [_Dataset])
    _only_entry_points(monkeypatch, ok="fake_ok")
    assert main(["plugins"]) == 0
    monkeypatch.setattr(plugins, "_manager", None)
    _only_entry_points(monkeypatch, ok="fake_ok", broken="no_such_module_xyz")
    assert main(["plugins"]) == 1
    out, err = capsys.readouterr()
    assert "fake-dataset" in out and out.splitlines()[-1].startswith("broken")
    assert "cannot be used: broken" in err
