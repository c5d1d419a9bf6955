"""The trainer's optimizer: fused Adam where torch has the kernel, the same algorithm as the for-loop."""

from __future__ import annotations

import pytest
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


@pytest.mark.parametrize("fused", [True, False])
def test_the_guard_skips_a_step_with_a_non_finite_gradient_and_changes_nothing_else(fused):
    from foundation.engine.optim import NonFiniteStepGuard

    def run(nan_at: int | None) -> tuple[torch.nn.Module, torch.optim.Adam, NonFiniteStepGuard]:
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=fused or None)
        guard = NonFiniteStepGuard(opt, "cpu")
        torch.manual_seed(1)
        for step in range(1, 9):
            x = torch.randn(8, 16)
            model(x).pow(2).mean().backward()
            if step == nan_at:  # a NaN weight gradient beside a finite loss, as oneDNN's convolution gave
                next(model.parameters()).grad[0, 0] = float("nan")
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            guard.step(opt, norm, step=step)
            opt.zero_grad(set_to_none=True)
        return model, opt, guard

    plain, plain_opt, plain_guard = run(None)
    skipped, skipped_opt, guard = run(5)
    assert plain_guard.total() == (0, -1) and guard.total() == (1, 5)
    for p, q in zip(plain.parameters(), skipped.parameters()):
        assert torch.isfinite(q).all()
        assert not torch.equal(p, q)  # step 5's update is missing ...
    assert all(int(skipped_opt.state[p]["step"]) == 7 for p in skipped.parameters())  # ... and counted as not taken
    assert all(int(plain_opt.state[p]["step"]) == 8 for p in plain.parameters())
    assert not hasattr(skipped_opt, "found_inf")  # nothing left on the optimizer for a later step


def test_the_guard_changes_no_result_of_finite_steps():
    from foundation.engine.optim import NonFiniteStepGuard

    a, b = _model(), _model()
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-2, fused=True)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, fused=True)
    guard = NonFiniteStepGuard(opt_b, "cpu")
    for step in range(1, 6):
        x = torch.randn(8, 16)
        for model, opt in ((a, opt_a), (b, opt_b)):
            model(x).pow(2).mean().backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            if opt is opt_b:
                guard.step(opt, norm, step=step)
            else:
                opt.step()
            opt.zero_grad(set_to_none=True)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
