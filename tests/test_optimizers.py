"""The per-Gaussian optimizer groups use torch's fused Adam, which follows the same update rule."""

from __future__ import annotations

import torch

from method_configs.unisem_splat import splat_optimizers
from unisem_ns.ns.optimizers import FusedAdamOptimizerConfig


def test_splat_groups_build_fused_adam():
    for name, group in splat_optimizers().items():
        param = torch.nn.Parameter(torch.zeros(4, 3))
        opt = group["optimizer"].setup([param])
        assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is True, name


def test_fused_adam_steps_match_the_reference_adam():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(1000, 3, generator=g)
    grads = [torch.randn(1000, 3, generator=g) for _ in range(5)]
    fused = torch.nn.Parameter(start.clone())
    plain = torch.nn.Parameter(start.clone())
    opt_fused = FusedAdamOptimizerConfig(lr=0.01, eps=1e-15).setup([fused])
    opt_plain = torch.optim.Adam([plain], lr=0.01, eps=1e-15, foreach=False)
    for grad in grads:
        for p, opt in ((fused, opt_fused), (plain, opt_plain)):
            p.grad = grad.clone()
            opt.step()
    assert not torch.equal(fused.detach(), start)
    torch.testing.assert_close(fused.detach(), plain.detach(), atol=1e-6, rtol=1e-5)
