"""Gaussian mixture models: the universal background model (UBM) and its EM fit.

A GMM (Eq. 1) has weights ``w (K,)``, means ``mu (K, D)`` and covariances of
one of three shapes:

* ``diag``        - ``variances (K, D)``, one diagonal per cluster;
* ``spherical``   - ``variances (K, 1)``, one sigma^2 per cluster;
* ``shared_full`` - ``covariance (D, D)``, one full matrix for all clusters
  (the paper's VLAD/SGMM baseline).

EM streams mini-batches: each iteration walks the data once, accumulating the
sufficient statistics n(k), S_x(k) and the needed second moments (Eq. 3-5) in
float64, so millions of frames never need to be in memory together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch

CovarianceType = Literal["diag", "spherical", "shared_full"]
COVARIANCE_TYPES: tuple[str, ...] = ("diag", "spherical", "shared_full")
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class GMM:
    """A fitted GMM. ``covariance`` is (K, D), (K, 1) or (D, D) by ``covariance_type``."""

    weights: torch.Tensor
    means: torch.Tensor
    covariance: torch.Tensor
    covariance_type: CovarianceType

    def __post_init__(self) -> None:
        k, d = self.means.shape
        expected = {"diag": (k, d), "spherical": (k, 1), "shared_full": (d, d)}[
            self.covariance_type
        ]
        if tuple(self.weights.shape) != (k,) or tuple(self.covariance.shape) != expected:
            raise ValueError(
                f"GMM shapes: weights {tuple(self.weights.shape)}, means {(k, d)}, "
                f"covariance {tuple(self.covariance.shape)} (expected {expected})"
            )

    @property
    def num_clusters(self) -> int:
        return int(self.means.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.means.shape[1])

    def to(self, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> GMM:
        return GMM(
            self.weights.to(device=device, dtype=dtype),
            self.means.to(device=device, dtype=dtype),
            self.covariance.to(device=device, dtype=dtype),
            self.covariance_type,
        )

    def diagonal_variances(self) -> torch.Tensor:
        """Per-cluster diagonal variances (K, D) (the diagonal of a full covariance)."""
        k, d = self.means.shape
        if self.covariance_type == "diag":
            return self.covariance
        if self.covariance_type == "spherical":
            return self.covariance.expand(k, d)
        return torch.diagonal(self.covariance).expand(k, d)

    def shared_precision_form(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (K, D), b (K,)) with ``log w_k + log N(x; k) = x^T u_k + b_k + c(x)`` (Eq. 20-21).

        Exact for ``shared_full``: the quadratic term x^T Sigma^-1 x is the same for every
        cluster and cancels in the posterior. For per-cluster covariances we use the
        weight-averaged diagonal covariance as the shared one (an approximation).
        """
        if self.covariance_type == "shared_full":
            cov = self.covariance
        else:
            cov = torch.diag((self.weights[:, None] * self.diagonal_variances()).sum(0))
        u = torch.linalg.solve(cov, self.means.T).T  # Sigma^-1 mu_k
        b = torch.log(self.weights) - 0.5 * (u * self.means).sum(1)
        return u, b

    def log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(x; mu_k, Sigma_k) for frames ``x (N, D)`` -> (N, K), constants included."""
        d = self.feature_dim
        log_w = torch.log(self.weights)
        if self.covariance_type == "shared_full":
            chol = torch.linalg.cholesky(self.covariance)
            # Whitened frames and means: y = L^-1 x, m = L^-1 mu.
            y = torch.linalg.solve_triangular(chol, x.T, upper=False).T
            m = torch.linalg.solve_triangular(chol, self.means.T, upper=False).T
            sq = (y * y).sum(1, keepdim=True) - y @ (2.0 * m).T + (m * m).sum(1)
            log_det = 2.0 * torch.log(torch.diagonal(chol)).sum()
            return log_w - 0.5 * (sq + log_det + d * _LOG_2PI)
        var = self.diagonal_variances()
        prec = 1.0 / var
        sq = (x * x) @ prec.T - x @ (2.0 * (self.means * prec)).T + (self.means**2 * prec).sum(1)
        log_det = torch.log(var).sum(1)
        return log_w - 0.5 * (sq + log_det + d * _LOG_2PI)

    def posteriors(self, x: torch.Tensor) -> torch.Tensor:
        """P(k | x) (Eq. 2) for frames ``x (..., D)`` -> (..., K)."""
        flat = x.reshape(-1, x.shape[-1])
        return torch.softmax(self.log_joint(flat), dim=1).reshape(*x.shape[:-1], -1)

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log p(x) over frames (N, D)."""
        return torch.logsumexp(self.log_joint(x), dim=1).mean()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"weights": self.weights, "means": self.means, "covariance": self.covariance}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], covariance_type: str) -> GMM:
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(
                f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
            )
        return cls(state["weights"], state["means"], state["covariance"], covariance_type)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- EM


@dataclass
class EMResult:
    gmm: GMM
    #: mean log-likelihood per frame, one entry per E-step (non-decreasing)
    log_likelihood: list[float] = field(default_factory=list)
    converged: bool = False
    num_frames: int = 0


#: rows of the sample a k-means step handles at once: the (rows, D) temporaries of a
#: distance computation stay ~64 MB in float64 however large the sample and D are
_KMEANS_BLOCK_VALUES = 1 << 23


def _row_blocks(x: torch.Tensor) -> list[slice]:
    step = max(1, _KMEANS_BLOCK_VALUES // max(x.shape[1], 1))
    return [slice(s, s + step) for s in range(0, x.shape[0], step)]


def _sq_dist_to_point(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """(N,) squared distances of the rows of x to p, a block of rows at a time."""
    return torch.cat([((x[b] - p) ** 2).sum(1) for b in _row_blocks(x)])


def _nearest_centre(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N,) index of each row's nearest centre, a block of rows at a time. (Here and in
    the other distance products the 2 multiplies the small side, the centres: the same
    bits as doubling the rows (a power of two), without a pass over them.)"""
    c2 = (c * c).sum(1)
    parts = [
        ((x[b] * x[b]).sum(1, keepdim=True) - x[b] @ (2 * c).T + c2).argmin(1)
        for b in _row_blocks(x)
    ]
    return torch.cat(parts)


def _kmeans_plus_plus(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    centres = [x[torch.randint(n, (1,), generator=gen)].squeeze(0)]
    d2 = _sq_dist_to_point(x, centres[0])
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than clusters: duplicate a point
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(d2 / total, 1, generator=gen))
        centres.append(x[idx])
        d2 = torch.minimum(d2, _sq_dist_to_point(x, x[idx]))
    return torch.stack(centres)


def kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """k-means++ initialisation then Lloyd iterations on an in-memory sample; (K, D) centres."""
    gen = torch.Generator().manual_seed(seed)
    c = _kmeans_plus_plus(x, k, gen)
    for _ in range(iters):
        a = _nearest_centre(x, c)
        counts = torch.bincount(a, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, a, x)
        nonempty = counts > 0
        c = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None], c)
    return c


def _as_tensor(batch: object, dtype: torch.dtype) -> torch.Tensor:
    t = batch if isinstance(batch, torch.Tensor) else torch.as_tensor(batch)
    if t.ndim != 2:
        raise ValueError(f"EM expects frame batches of shape (N, D), got {tuple(t.shape)}")
    return t.to(dtype)


def _m_step(
    n: torch.Tensor,
    sx: torch.Tensor,
    sxx: torch.Tensor,
    total: int,
    covariance_type: CovarianceType,
    var_floor: float,
    old: GMM,
) -> GMM:
    # A cluster that received no mass keeps its previous mean and variance; tiny
    # weights are floored so log w stays finite.
    alive = n > 1e-10
    nn = n.clamp_min(1e-10)
    means = torch.where(alive[:, None], sx / nn[:, None], old.means)
    weights = (n / total).clamp_min(1e-12)
    weights = weights / weights.sum()
    if covariance_type == "shared_full":
        # Sigma = (sum_t x x^T - sum_k n_k mu_k mu_k^T) / N, eigenvalues floored
        # (the constrained maximiser, so EM stays monotone).
        cov = (sxx - (means * n[:, None]).T @ means) / total
        cov = 0.5 * (cov + cov.T)
        evals, evecs = torch.linalg.eigh(cov)
        cov = (evecs * evals.clamp_min(var_floor)) @ evecs.T
        return GMM(weights, means, 0.5 * (cov + cov.T), covariance_type)
    var = sxx / nn[:, None] - means**2  # (K, D): E[x^2] - mu^2
    if covariance_type == "spherical":
        var = var.mean(1, keepdim=True)
    var = torch.where(alive[:, None], var.clamp_min(var_floor), old.covariance)
    return GMM(weights, means, var, covariance_type)


def fit_gmm(
    batches: Callable[[], Iterable[object]],
    num_clusters: int,
    covariance_type: CovarianceType = "diag",
    max_iter: int = 50,
    tol: float = 1e-4,
    var_floor: float = 1e-3,
    init_frames: int = 20_000,
    kmeans_iters: int = 10,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    on_iteration: Callable[[int, float], None] | None = None,
) -> EMResult:
    """Fit a GMM by EM over streamed frame batches.

    ``batches()`` must return a fresh iterable of (N, D) arrays or tensors each time
    it is called (one call per EM iteration). Initialisation runs k-means++ and
    Lloyd on the first ``init_frames`` frames. Stops when the mean log-likelihood
    improves by less than ``tol`` or after ``max_iter`` iterations.
    """
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )
    if num_clusters < 1:
        raise ValueError("num_clusters must be >= 1")
    sample: list[torch.Tensor] = []
    got = 0
    for b in batches():
        t = _as_tensor(b, dtype).to(device)
        sample.append(t)
        got += t.shape[0]
        if got >= init_frames:
            break
    if not sample or got == 0:
        raise ValueError("EM needs at least one frame")
    x0 = torch.cat(sample)[:init_frames]
    if not torch.isfinite(x0).all():
        raise ValueError("frames contain NaN or inf")
    d = x0.shape[1]
    centres = kmeans(x0, num_clusters, iters=kmeans_iters, seed=seed)
    # Initial parameters from the hard k-means assignment of the sample.
    sq = (x0 * x0).sum(1, keepdim=True) - x0 @ (2 * centres).T + (centres * centres).sum(1)
    a = sq.argmin(1)
    onehot = torch.nn.functional.one_hot(a, num_clusters).to(dtype)
    n0 = onehot.sum(0)
    global_var = x0.var(0, unbiased=False).clamp_min(var_floor)
    if covariance_type == "shared_full":
        cov0 = torch.diag(global_var)
    elif covariance_type == "diag":
        cov0 = global_var.expand(num_clusters, d).clone()
    else:
        cov0 = global_var.mean().expand(num_clusters, 1).clone()
    gmm = GMM(((n0 + 1) / (n0 + 1).sum()), centres, cov0, covariance_type)
    gmm = _m_step(
        n0,
        onehot.T @ x0,
        _second_moment(x0, onehot, covariance_type),
        x0.shape[0],
        covariance_type,
        var_floor,
        gmm,
    )

    result = EMResult(gmm=gmm)
    prev = -math.inf
    for it in range(max_iter):
        n = torch.zeros(num_clusters, dtype=dtype, device=device)
        sx = torch.zeros(num_clusters, d, dtype=dtype, device=device)
        sxx = torch.zeros(
            (d, d) if covariance_type == "shared_full" else (num_clusters, d),
            dtype=dtype,
            device=device,
        )
        ll_sum = 0.0
        total = 0
        for b in batches():
            x = _as_tensor(b, dtype).to(device)
            if x.shape[1] != d:
                raise ValueError(f"frame batch has D = {x.shape[1]}, expected {d}")
            lj = gmm.log_joint(x)
            lse = torch.logsumexp(lj, dim=1)
            post = torch.exp(lj - lse[:, None])  # (N, K)
            ll_sum += float(lse.sum())
            total += x.shape[0]
            n += post.sum(0)
            sx += post.T @ x
            sxx += _second_moment(x, post, covariance_type)
        ll = ll_sum / total
        result.log_likelihood.append(ll)
        result.num_frames = total
        if on_iteration is not None:
            on_iteration(it, ll)
        if ll - prev < tol * max(1.0, abs(ll)):
            result.converged = True
            break
        prev = ll
        gmm = _m_step(n, sx, sxx, total, covariance_type, var_floor, gmm)
        result.gmm = gmm
    return result


def _second_moment(x: torch.Tensor, post: torch.Tensor, covariance_type: str) -> torch.Tensor:
    if covariance_type == "shared_full":
        return x.T @ x  # (D, D): the shared covariance needs only the total second moment
    return post.T @ (x * x)  # (K, D): diagonal of Eq. 5 per cluster
