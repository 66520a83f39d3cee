from __future__ import annotations

import numpy as np
import torch

from embeddings import ContextGating, MixtureOfExperts, MoEConfig


def test_context_gating_matches_formula() -> None:
    torch.manual_seed(0)
    cg = ContextGating(5).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    w, b = cg.linear.weight.detach().numpy(), cg.linear.bias.detach().numpy()
    xn = x.numpy()
    expect = xn * (1 / (1 + np.exp(-(xn @ w.T + b))))
    np.testing.assert_allclose(cg(x).detach().numpy(), expect, atol=1e-12)


def test_mixture_of_experts_matches_loop() -> None:
    torch.manual_seed(1)
    moe = MixtureOfExperts(MoEConfig(input_dim=4, num_classes=3, num_mixtures=2)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    out = moe(x).detach().numpy()
    g = (x @ moe.gates.weight.T + moe.gates.bias).detach().numpy().reshape(2, 3, 3)
    e = (x @ moe.experts.weight.T + moe.experts.bias).detach().numpy().reshape(2, 3, 2)
    for b in range(2):
        for c in range(3):
            gate = np.exp(g[b, c]) / np.exp(g[b, c]).sum()
            expert = 1 / (1 + np.exp(-e[b, c]))
            assert abs(out[b, c] - (gate[:2] * expert).sum()) < 1e-12
    assert (out > 0).all() and (out < 1).all()
