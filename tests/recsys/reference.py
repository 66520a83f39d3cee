"""Direct re-computations the GLMix tests compare against (scipy's BFGS, no shortcuts)."""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize


def scipy_penalised(x, y, off, lam):
    def neg(b):
        eta = off + x @ b
        return -(y * eta - np.logaddexp(0, eta)).sum() + 0.5 * (lam * b * b).sum()

    def grad(b):
        mu = 1 / (1 + np.exp(-(off + x @ b)))
        return -(x.T @ (y - mu)) + lam * b

    return minimize(neg, np.zeros(x.shape[1]), jac=grad, method="BFGS", options={"gtol": 1e-11}).x
