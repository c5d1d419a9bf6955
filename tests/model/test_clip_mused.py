"""CLIPMUSED: shapes per token mode, subject vocabulary and growth, (de)serialisation, training."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from foundation.core.api import DatasetInfo
from foundation.core.config import LossConfig, ModelConfig
from foundation.core.errors import CheckpointError, UnknownSubjectError
from foundation.objectives.losses import clip_mused_loss
from foundation.model import CLIPMUSED, Block, ModelOutput, SubjectTokens

DIM = 32
ROI = DatasetInfo(kind="roi", label_names=("a", "b", "c"), subjects=("s1", "s2"), token_shape=(5, 7))
VOL = DatasetInfo(kind="volume", label_names=("x", "y"), subjects=("100",), grid=(13, 17, 11))
DATASETS = {"nsd": ROI, "hcp": VOL}
SUBJECTS = ["nsd/s1", "nsd/s2", "hcp/100"]
MODES = ("subject", "shared", "identity")


def cfg(tokens: str = "subject", **kw) -> ModelConfig:
    base = dict(dim=DIM, depth=2, heads=4, head_hidden=16, tokens=tokens, volume_channels=[4, 8])
    return ModelConfig(**{**base, **kw})


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def volume_batch(b: int, grid=(13, 17, 11), seed: int = 0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(grid))
    vmax = 300
    index = np.full((b, vmax), n, np.int64)
    for i in range(b):
        k = 150 + 25 * i
        index[i, :k] = np.sort(rng.choice(n, k, replace=False))
    voxels = rng.standard_normal((b, vmax)).astype(np.float32)
    return torch.from_numpy(voxels), torch.from_numpy(index)


@pytest.mark.parametrize("mode", MODES)
def test_roi_shapes(mode):
    m = CLIPMUSED(cfg(mode), DATASETS, SUBJECTS)
    out = m("nsd", torch.randn(4, 5, 7), m.subject_index(["nsd/s1", "nsd/s2", "nsd/s2", "nsd/s1"]))
    assert isinstance(out, ModelOutput)
    assert out.z_low.shape == out.z_high.shape == (4, DIM)
    assert out.logits.shape == (4, 3) and out.attention is None
    r = 1 if mode == "identity" else 2
    assert m.n_readout == r and m.pos_embed["nsd"].shape == (1, r + 5, DIM)
    assert m.heads["nsd"][0].in_features == r * DIM


@pytest.mark.parametrize("mode", MODES)
def test_volume_shapes_and_attention(mode):
    m = CLIPMUSED(cfg(mode), DATASETS, SUBJECTS).eval()
    voxels, index = volume_batch(3)
    idx = m.subject_index(["hcp/100"] * 3)
    out = m("hcp", voxels, idx, voxel_index=index, return_attention=True)
    t = m.n_readout + 4 * 5 * 3  # ceil(13/4) * ceil(17/4) * ceil(11/4) patches
    assert out.logits.shape == (3, 2) and out.z_low.shape == (3, DIM)
    assert out.attention is not None and out.attention.shape == (3, 4, t, t)
    assert torch.allclose(out.attention.sum(-1), torch.ones(3, 4, t), atol=1e-5)
    plain = m("hcp", voxels, idx, voxel_index=index)  # fused SDPA path gives the same result
    assert torch.allclose(plain.logits, out.logits, atol=1e-5)
    with pytest.raises(ValueError, match="voxel_index"):
        m("hcp", voxels, idx)


def test_z_low_and_z_high_are_the_normed_readout_tokens():
    m = CLIPMUSED(cfg("subject"), DATASETS, SUBJECTS).eval()
    out = m("nsd", torch.randn(2, 5, 7), m.subject_index(["nsd/s1", "nsd/s2"]))
    assert torch.allclose(out.z_low.mean(-1), torch.zeros(2), atol=1e-5)  # LN output (affine = id at init)
    assert not torch.allclose(out.z_low, out.z_high)
    ident = CLIPMUSED(cfg("identity"), DATASETS, SUBJECTS).eval()
    out = ident("nsd", torch.randn(2, 5, 7), ident.subject_index(["nsd/s1", "nsd/s2"]))
    assert torch.equal(out.z_low, out.z_high)


def test_hcp_model_has_392_patch_tokens():
    hcp = DatasetInfo(kind="volume", label_names=tuple("abc"), subjects=("1",), grid=(112, 128, 112))
    m = CLIPMUSED(cfg(dim=16, heads=2, volume_channels=[16, 32, 64, 128]), {"hcp": hcp}, ["hcp/1"])
    assert m.adapters["hcp"].num_tokens == 392
    assert m.pos_embed["hcp"].shape == (1, 2 + 392, 16)


@pytest.mark.parametrize(("mode", "per_subject"), [("subject", 2 * DIM), ("identity", DIM), ("shared", 0)])
def test_parameter_count_grows_only_by_tokens(mode, per_subject):
    few = CLIPMUSED(cfg(mode), {"nsd": ROI}, [f"nsd/s{i}" for i in range(9)])
    many = CLIPMUSED(cfg(mode), {"nsd": ROI}, [f"nsd/s{i}" for i in range(1000)])
    assert n_params(many) - n_params(few) == 991 * per_subject
    if mode == "subject":
        tables = [mod for mod in many.modules() if isinstance(mod, SubjectTokens)]
        assert len(tables) == 1 and tables[0].weight.shape == (1000, 2, DIM)


@pytest.mark.parametrize("mode", MODES)
def test_add_subjects_touches_nothing_else(mode):
    torch.manual_seed(0)
    m = CLIPMUSED(cfg(mode), DATASETS, SUBJECTS)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    n0 = n_params(m)
    m.add_subjects(["nsd/s3", "hcp/200"])
    per_subject = {"subject": 2 * DIM, "identity": DIM, "shared": 0}[mode]
    assert n_params(m) - n0 == 2 * per_subject
    assert m.vocab == SUBJECTS + ["nsd/s3", "hcp/200"]
    after = m.state_dict()
    assert after.keys() == before.keys()
    for k, old in before.items():
        new = after[k]
        if k == "subject_tokens.weight":
            assert new.shape[0] == old.shape[0] + 2
            new = new[: old.shape[0]]
        assert new.shape == old.shape and torch.equal(new, old), k  # byte-identical
    out = m("nsd", torch.randn(2, 5, 7), m.subject_index(["nsd/s3", "nsd/s1"]))
    assert out.logits.shape == (2, 3)
    with pytest.raises(ValueError, match="nsd/s1"):
        m.add_subjects(["nsd/s1"])
    with pytest.raises(ValueError, match="other/x"):
        m.add_subjects(["other/x"])  # no such dataset


@pytest.mark.parametrize("mode", MODES)
def test_unknown_subject_raises_naming_it(mode):
    m = CLIPMUSED(cfg(mode), DATASETS, SUBJECTS)
    with pytest.raises(UnknownSubjectError, match=r"nsd/s9.*3 known"):
        m.subject_index(["nsd/s1", "nsd/s9"])


def test_subjects_must_belong_to_a_dataset():
    with pytest.raises(ValueError, match="s1"):
        CLIPMUSED(cfg(), DATASETS, ["s1"])


def test_shared_tokens_ignore_subject_but_subject_tokens_do_not():
    x = torch.randn(1, 5, 7).expand(2, -1, -1)
    for mode, same in (("shared", True), ("subject", False), ("identity", False)):
        m = CLIPMUSED(cfg(mode), DATASETS, SUBJECTS).eval()
        out = m("nsd", x, m.subject_index(["nsd/s1", "nsd/s2"]))
        assert torch.allclose(out.logits[0], out.logits[1]) is same, mode


def test_config_dict_round_trip_through_json():
    torch.manual_seed(0)
    m = CLIPMUSED(cfg("subject"), DATASETS, SUBJECTS).eval()
    d = json.loads(json.dumps(m.config_dict()))
    assert d["vocab"] == SUBJECTS and d["model"]["tokens"] == "subject"
    m2 = CLIPMUSED.from_config_dict(d).eval()
    assert m2.infos == m.infos and m2.cfg == m.cfg
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 5, 7)
    idx = m.subject_index(["nsd/s2", "nsd/s1"])
    assert torch.equal(m("nsd", x, idx).logits, m2("nsd", x, idx).logits)
    with pytest.raises(CheckpointError):
        CLIPMUSED.from_config_dict({"model": {"nope": 1}, "datasets": {}, "vocab": []})
    grown = CLIPMUSED(cfg("subject"), DATASETS, SUBJECTS + ["nsd/s3"])
    with pytest.raises(CheckpointError, match="3 subjects"):
        grown.load_state_dict(m.state_dict())


def test_block_mlp_residual_adds_to_post_attention_state():
    """Eq. 3 (z_l = MLP(LN(z'_l)) + z'_l), not Eq. 7's typo (+ z_{l-1})."""
    torch.manual_seed(0)
    blk = Block(16, 2, 2.0, 0.0, 0.0).eval()
    torch.nn.init.zeros_(blk.mlp.fc2.weight)
    torch.nn.init.zeros_(blk.mlp.fc2.bias)  # MLP branch is now exactly 0
    x = torch.randn(2, 5, 16)
    y, _ = blk(x)
    a, _ = blk.attn(blk.norm1(x))
    assert torch.allclose(y, x + a, atol=1e-6)
    assert not torch.allclose(y, x, atol=1e-3)


@pytest.mark.parametrize("dataset", ["nsd", "hcp"])
def test_model_trains_on_a_tiny_batch(dataset):
    torch.manual_seed(0)
    m = CLIPMUSED(cfg("subject", dropout=0.0), DATASETS, SUBJECTS)
    b = 6
    if dataset == "nsd":
        fmri, vidx = torch.randn(b, 5, 7), None
        subj = ["nsd/s1", "nsd/s2"] * 3
    else:
        fmri, vidx = volume_batch(b, seed=1)
        subj = ["hcp/100"] * b
    labels = (torch.rand(b, DATASETS[dataset].num_labels) > 0.5).float()
    feat_low, feat_high = torch.randn(b, 10).half(), torch.randn(b, 12).half()
    idx = m.subject_index(subj)
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    losses, bces = [], []
    for _ in range(30):
        out = m(dataset, fmri, idx, voxel_index=vidx)
        loss, terms = clip_mused_loss(out, labels, feat_low, feat_high, LossConfig(0.001, 0.1, 0.1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(terms["loss"].item())
        bces.append(terms["bce"].item())
        assert np.isfinite(losses[-1])
    assert losses[-1] < 0.9 * losses[0], losses
    assert bces[-1] < 0.9 * bces[0], bces
    assert m.subject_tokens.weight.grad is not None


def test_config_is_not_mutated_and_checked():
    c = cfg()
    CLIPMUSED(c, DATASETS, SUBJECTS)
    assert c == cfg()
    with pytest.raises(ValueError, match="heads"):
        CLIPMUSED(dataclasses.replace(c, heads=5), DATASETS, SUBJECTS)
    with pytest.raises(ValueError, match="tokens"):
        CLIPMUSED(dataclasses.replace(c, tokens="nope"), DATASETS, SUBJECTS)


def test_linear_head_is_one_map_from_the_readout_tokens_and_survives_a_round_trip():
    torch.manual_seed(0)
    m = CLIPMUSED(cfg("subject", head="linear"), DATASETS, SUBJECTS).eval()
    linears = [mod for mod in m.heads["nsd"].modules() if isinstance(mod, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(2 * DIM, 3)]
    x, idx = torch.randn(2, 5, 7), m.subject_index(["nsd/s1", "nsd/s2"])
    out = m("nsd", x, idx)
    # the logits are an affine function of the normed readout tokens, nothing in between
    assert torch.allclose(out.logits, linears[0](torch.cat([out.z_low, out.z_high], 1)), atol=1e-6)
    m2 = CLIPMUSED.from_config_dict(json.loads(json.dumps(m.config_dict()))).eval()
    m2.load_state_dict(m.state_dict())
    assert m2.cfg.head == "linear" and torch.equal(m2("nsd", x, idx).logits, out.logits)
    # checkpoints written before model.head existed have the paper's MLP head
    old = m.config_dict()
    del old["model"]["head"]
    assert CLIPMUSED.from_config_dict(old).cfg.head == "mlp"
    with pytest.raises(ValueError, match="model.head"):
        CLIPMUSED(cfg("subject", head="deep"), DATASETS, SUBJECTS)


@pytest.mark.parametrize("backbone", ["transformer", "mlp"])
def test_the_label_head_and_mappers_stay_float32_under_bf16_autocast(backbone):
    """docs/PERFORMANCE.md round 8: a bf16 label head cost the default world 0.034 test mAP; the head (and
    the mapping loss's mappers) must compute in float32 from float32 tokens, autocast or not."""
    torch.manual_seed(0)
    tokens = "shared" if backbone == "mlp" else "subject"
    m = CLIPMUSED(cfg(tokens, backbone=backbone, mapping_dims=(6, 5)), DATASETS, SUBJECTS).eval()
    x, idx = torch.randn(3, 5, 7), m.subject_index(["nsd/s1", "nsd/s2", "nsd/s1"])
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m("nsd", x, idx)
    assert out.logits.dtype == out.mapped_low.dtype == out.mapped_high.dtype == torch.float32
    z = torch.stack([out.z_low, out.z_high], 1).float()  # what the head reads: the tokens, in float32
    assert torch.allclose(out.logits, m.heads["nsd"](z.flatten(1)), atol=1e-6)  # float32 outside autocast
    assert torch.allclose(out.mapped_low, m.mappers["low"](z[:, 0]), atol=1e-6)
    # the float32 path is untouched: no autocast, the same numbers as before the change
    plain = m("nsd", x, idx)
    assert torch.equal(plain.logits, m.heads["nsd"](torch.cat([plain.z_low, plain.z_high], 1)))
    # a volume dataset (3-D patchifier, interleaved with the encoder) ends in the same float32 head
    vox, index = volume_batch(2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = m("hcp", vox, m.subject_index(["hcp/100"] * 2), voxel_index=index)
    assert out.logits.dtype == torch.float32 and out.logits.shape == (2, 2) and torch.isfinite(out.logits).all()


def test_mlp_backbone_baseline_has_no_tokens_or_transformer():
    import torch

    from foundation.core.api import DatasetInfo
    from foundation.core.config import ModelConfig
    from foundation.model import CLIPMUSED

    infos = {"roi": DatasetInfo(kind="roi", label_names=("a", "b", "c"), subjects=("s1", "s2"), token_shape=(4, 6)),
             "vol": DatasetInfo(kind="volume", label_names=("a", "b"), subjects=("s1",), grid=(6, 7, 6))}
    cfg = ModelConfig(dim=16, depth=2, heads=2, head_hidden=8, tokens="shared", backbone="mlp", volume_channels=[4])
    model = CLIPMUSED(cfg, infos, ["roi/s1", "roi/s2", "vol/s1"])
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith(("encoder.", "pos_embed.", "shared_tokens")) for n in names)
    out = model("roi", torch.randn(5, 4, 6), model.subject_index(["roi/s1"] * 5), return_attention=True)
    assert out.logits.shape == (5, 3) and out.z_low.shape == (5, 16) and out.attention is None
    out.logits.sum().backward()  # every parameter used by its dataset gets a gradient
    assert all(p.grad is not None for n, p in model.named_parameters() if ".vol" not in n and not n.endswith("vol"))
    vox = torch.randn(2, 30)
    index = torch.stack([torch.randperm(6 * 7 * 6)[:30] for _ in range(2)])
    assert model("vol", vox, model.subject_index(["vol/s1"] * 2), voxel_index=index).logits.shape == (2, 2)
    with pytest.raises(ValueError, match="tokens=shared"):
        CLIPMUSED(ModelConfig(dim=16, heads=2, backbone="mlp", tokens="subject"), infos, ["roi/s1"])


def test_shared_label_head_scores_each_dataset_on_its_own_columns_of_one_head():
    """``label_head: shared``: one head over the union of label names; a name shared by two datasets is one output."""
    torch.manual_seed(0)
    roi = DatasetInfo(kind="roi", label_names=("a", "b", "c"), subjects=("s1", "s2"), token_shape=(5, 7))
    other = DatasetInfo(kind="roi", label_names=("c", "d", "a"), subjects=("s1",), token_shape=(4, 7))
    m = CLIPMUSED(cfg("subject", label_head="shared"), {"nsd": roi, "more": other},
                  ["nsd/s1", "nsd/s2", "more/s1"]).eval()
    assert m.label_names == ["a", "b", "c", "d"] and len(m.heads) == 0
    assert m.head_for("nsd") == m.head_for("more") == ("label_head", m.label_head)
    x, y = torch.randn(3, 5, 7), torch.randn(3, 4, 7)
    out_a = m("nsd", x, m.subject_index(["nsd/s1"] * 3))
    out_b = m("more", y, m.subject_index(["more/s1"] * 3))
    assert out_a.logits.shape == (3, 3) and out_b.logits.shape == (3, 3)
    full = m.label_head(torch.cat([out_b.z_low, out_b.z_high], 1))
    assert torch.allclose(out_b.logits, full[:, [2, 3, 0]])
    # training "more" on label "a" moves "nsd"'s "a" output: the two datasets share that read-out
    before = m("nsd", x, m.subject_index(["nsd/s1"] * 3)).logits.detach()
    opt = torch.optim.SGD(m.label_head.parameters(), lr=0.5)
    loss = -out_b.logits[:, 2].mean()
    loss.backward()
    opt.step()
    after = m("nsd", x, m.subject_index(["nsd/s1"] * 3)).logits.detach()
    assert (after[:, 0] - before[:, 0]).abs().min() > 0  # "a": shared with "more"
    # round trip keeps the shared head
    m2 = CLIPMUSED.from_config_dict(json.loads(json.dumps(m.config_dict()))).eval()
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2("more", y, m2.subject_index(["more/s1"] * 3)).logits,
                       m("more", y, m.subject_index(["more/s1"] * 3)).logits)
    # the per-dataset default: no shared head, one head per dataset
    assert CLIPMUSED(cfg("subject"), DATASETS, SUBJECTS).label_head is None


@pytest.mark.parametrize("patchifier", ["resnet", "cnn"])
def test_volume_input_reaches_the_patchifier_and_survives_the_config_round_trip(patchifier):
    torch.manual_seed(0)
    voxels, index = volume_batch(2)
    outs = {}
    for how, expected in (("raw", False), ("standardize", True)):
        torch.manual_seed(0)
        m = CLIPMUSED(cfg(patchifier=patchifier, volume_input=how), DATASETS, SUBJECTS).eval()
        assert m.adapters["hcp"].standardize is expected
        idx = m.subject_index(["hcp/100"] * 2)
        outs[how] = m("hcp", voxels * 0.1 + 0.5, idx, voxel_index=index).logits
        m2 = CLIPMUSED.from_config_dict(json.loads(json.dumps(m.config_dict()))).eval()
        m2.load_state_dict(m.state_dict())
        assert m2.adapters["hcp"].standardize is expected
        assert torch.equal(m2("hcp", voxels * 0.1 + 0.5, idx, voxel_index=index).logits, outs[how])
    assert not torch.allclose(outs["raw"], outs["standardize"])  # same weights, another input
    # a checkpoint written before the key existed loads as the raw input it was trained on
    d = json.loads(json.dumps(m.config_dict()))
    del d["model"]["volume_input"]
    assert CLIPMUSED.from_config_dict(d).adapters["hcp"].standardize is False


@pytest.mark.parametrize("patchifier", ["resnet", "cnn"])
@pytest.mark.parametrize(("modules", "option"), [("spatial_readouts", {"volume_readout": "spatial"}),
                                                 ("voxel_readouts", {"volume_linear_rank": 4})])
def test_shared_readouts_start_as_the_papers_model_then_learn_and_survive_the_config_round_trip(patchifier, modules,
                                                                                                option):
    """``model.volume_readout: spatial`` (a weight per patch position) and ``model.volume_linear_rank`` (a linear map
    of the voxels): built for volume datasets only, zero at the start, trained from the first step, saved."""
    voxels, index = volume_batch(3)
    torch.manual_seed(0)
    m = CLIPMUSED(cfg(patchifier=patchifier, dropout=0.0, **option), DATASETS, SUBJECTS)
    assert list(getattr(m, modules)) == ["hcp"]  # volume datasets only; the ROI dataset reads through attention
    if modules == "voxel_readouts":
        assert m.voxel_readouts["hcp"].grid == tuple(DATASETS["hcp"].grid)
    idx = m.subject_index(["hcp/100"] * 3)
    paper = {k: v for k, v in m.state_dict().items() if not k.startswith(f"{modules}.")}
    torch.manual_seed(0)
    reference = CLIPMUSED(cfg(patchifier=patchifier, dropout=0.0), DATASETS, SUBJECTS)
    reference.load_state_dict(paper)
    before = m("hcp", voxels, idx, voxel_index=index)
    # the read-out's last map starts at zero: the untrained model computes exactly the paper's read-out
    assert torch.equal(before.logits, reference("hcp", voxels, idx, voxel_index=index).logits)
    out = m("hcp", voxels, idx, voxel_index=index)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, torch.ones_like(out.logits))
    loss.backward()
    read = getattr(m, modules)["hcp"].read.weight
    assert read.grad is not None and read.grad.abs().sum() > 0  # it trains from the first step
    with torch.no_grad():
        read.normal_(0, 0.05)
    changed = m("hcp", voxels, idx, voxel_index=index).logits
    assert not torch.allclose(changed, before.logits)
    m2 = CLIPMUSED.from_config_dict(json.loads(json.dumps(m.config_dict())))
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2("hcp", voxels, idx, voxel_index=index).logits, changed)
    # a checkpoint written before the key existed loads as the paper's read-out
    d = json.loads(json.dumps(m.config_dict()))
    del d["model"][next(iter(option))]
    assert len(getattr(CLIPMUSED.from_config_dict(d), modules)) == 0
