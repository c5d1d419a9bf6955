"""The trainer's optimizer: fused Adam where torch has the kernel, the same algorithm as the for-loop."""

from __future__ import annotations

import torch

from foundation.engine.optim import build_adam


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))


def _train(opt: torch.optim.Optimizer, model: torch.nn.Module, steps: int = 20) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(8, 16, generator=g)
        loss = model(x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_cpu_gets_the_fused_kernel_and_the_for_loop_result():
    fused_model, loop_model = _model(), _model()
    groups = [{"params": fused_model[0].parameters()}, {"params": fused_model[2].parameters(), "weight_decay": 0.0}]
    fused = build_adam(groups, lr=1e-2, weight_decay=0.01, device="cpu")
    assert fused.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused.param_groups] == [0.01, 0.0]
    loop = torch.optim.Adam([{"params": loop_model[0].parameters()},
                             {"params": loop_model[2].parameters(), "weight_decay": 0.0}],
                            lr=1e-2, weight_decay=0.01, foreach=False, fused=False)
    _train(fused, fused_model)
    _train(loop, loop_model)
    moved = False
    for a, b, start in zip(fused_model.parameters(), loop_model.parameters(), _model().parameters()):
        moved |= not torch.allclose(a, start)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)  # same update rule, other rounding
    assert moved


def test_a_device_without_the_kernel_keeps_torchs_default():
    opt = build_adam([{"params": _model().parameters()}], lr=1e-3, weight_decay=0.0, device="meta")
    assert not opt.defaults["fused"]


def test_the_trainer_builds_it(tiny_recipe):
    from foundation.engine.trainer import Trainer

    trainer = Trainer(tiny_recipe(), progress=False)
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # Accelerate's wrapper
    assert opt.defaults["fused"] is True
