"""SubjectTokens / SubjectVocab: vocabulary, lookup errors, growth."""

from __future__ import annotations

import pytest
import torch

from foundation.core.errors import CheckpointError, UnknownSubjectError
from foundation.model import SubjectTokens, SubjectVocab

VOCAB = ["nsd/subj01", "nsd/subj02", "hcp/100307"]


def test_index_and_forward_gather_rows():
    tok = SubjectTokens(VOCAB, dim=8, tokens_per_subject=2)
    assert tok.vocab == VOCAB
    assert tok.weight.shape == (3, 2, 8)
    idx = tok.index(["hcp/100307", "nsd/subj01", "hcp/100307"])
    assert idx.dtype == torch.long and idx.tolist() == [2, 0, 2]
    out = tok(idx)
    assert out.shape == (3, 2, 8)
    assert torch.equal(out[0], tok.weight[2]) and torch.equal(out[1], tok.weight[0])


def test_init_is_truncated_normal_with_std_002():
    torch.manual_seed(0)
    w = SubjectTokens([f"d/s{i}" for i in range(500)], dim=64, tokens_per_subject=2).weight
    assert w.abs().max() <= 0.04 + 1e-6  # truncated at 2 std
    assert 0.012 < w.std().item() < 0.02


def test_unknown_subject_error_names_ids_and_vocab_size():
    tok = SubjectTokens(VOCAB, dim=4, tokens_per_subject=2)
    with pytest.raises(UnknownSubjectError) as exc:
        tok.index(["nsd/subj01", "nsd/subj99", "bogus/x"])
    msg = str(exc.value)
    assert "nsd/subj99" in msg and "bogus/x" in msg and "3 known" in msg
    assert "nsd/subj01'" not in msg.split("known")[0]  # known ids are not reported as unknown
    assert isinstance(exc.value, KeyError)


def test_duplicate_ids_rejected():
    with pytest.raises(ValueError, match="nsd/a"):
        SubjectTokens(["nsd/a", "nsd/b", "nsd/a"], dim=4, tokens_per_subject=1)
    tok = SubjectTokens(["nsd/a"], dim=4, tokens_per_subject=1)
    with pytest.raises(ValueError, match="already in the vocabulary.*nsd/a"):
        tok.add_subjects(["nsd/c", "nsd/a"])
    with pytest.raises(ValueError, match="repeated.*nsd/d"):
        tok.add_subjects(["nsd/d", "nsd/d"])
    assert tok.vocab == ["nsd/a"] and tok.weight.shape == (1, 1, 4)  # failed calls changed nothing


@pytest.mark.parametrize("tps", [1, 2])
def test_add_subjects_appends_rows_and_keeps_old_ones(tps):
    tok = SubjectTokens(VOCAB, dim=16, tokens_per_subject=tps)
    before = tok.weight.detach().clone()
    n_before = sum(p.numel() for p in tok.parameters())
    tok.add_subjects(["new/a", "new/b"])
    assert sum(p.numel() for p in tok.parameters()) - n_before == 2 * tps * 16
    assert tok.vocab == VOCAB + ["new/a", "new/b"]
    assert tok.weight.shape == (5, tps, 16) and tok.weight.requires_grad
    assert torch.equal(tok.weight[:3].detach(), before)  # bit-for-bit
    assert tok.index(["new/b"]).tolist() == [4]
    assert tok.weight[3:].abs().max() > 0  # new rows are initialised, not zeros


def test_load_state_dict_with_other_vocab_size_is_checkpoint_error():
    small = SubjectTokens(VOCAB, dim=4, tokens_per_subject=2)
    big = SubjectTokens(VOCAB + ["x/y"], dim=4, tokens_per_subject=2)
    with pytest.raises(CheckpointError, match="3 subjects"):
        big.load_state_dict(small.state_dict())
    big2 = SubjectTokens(VOCAB + ["x/y"], dim=4, tokens_per_subject=2)
    big2.load_state_dict(big.state_dict())
    assert torch.equal(big2.weight, big.weight)


def test_vocab_is_a_copy_and_len():
    v = SubjectVocab(["a/1"])
    keys = v.keys
    keys.append("a/2")
    assert len(v) == 1 and "a/1" in v and "a/2" not in v
