"""Online GLMix's inner solve for many users at once: each user's MAP random effect

    maximise  sum_i [y_i eta_i - log(1 + e^eta_i)]  -  1/2 (b - m)^T diag(P) (b - m)
    eta_i = offset_i + z_i^T b

by Newton's method with step halving, from the prior mean m, until the step is below
1e-10 or ``steps`` are taken (``recsys.online.users`` states the model). A user also
stops, before a solve, where the gradient g shows that the next step would be below
1e-10: the Hessian H = D + Z^T W Z is at least D, so the Newton step H^-1 g has

    |H^-1 g|_max <= |H^-1 g|_2 <= sqrt(g^T D^-1 g / min(D)),

(``step_bound``); without it every user paid one more factorisation to see a step it
did not need. Each system is solved by Cholesky, one matrix at a time (``spd_solve``).

Users are solved together in buckets of equal padded length L (``bucket`` of their
row count), with masked padding rows that contribute exactly nothing, so a
user's arithmetic depends on their own rows alone: the same bits whichever users share
the batch (replicas batch events differently; they must hold the same effects).

The prior's precision carries a ridge: D = diag(P) + 1e-9 I, in the penalty and the
curvature alike (a window that leaves a direction free still has one maximum). With
W = diag(mu (1 - mu)), the Newton system H = D + Z^T W Z (q x q) is solved in the
smaller of two forms:

- primal (L >= q): LU of the q x q Hessian, as written;
- dual (L < q): the maximum lies in b = m + D^-1 Z^T a for some a in R^L (its gradient
  condition reads D (b - m) = Z^T r), so Newton runs on a, with K = Z D^-1 Z^T
  (L x L, fixed): eta = offset + Z m + K a, penalty a^T K a / 2, and the step
  (I + W K) d = r - a solved through I + S K S (S = W^(1/2); eigenvalues >= 1, well
  conditioned whatever mu is). Its iterates are the primal's (Woodbury), each step
  costing L x L work instead of passes over the (L, q) rows.

A window of a few rows then costs a few L x L solves, not a q x q one per step: most
users in an impression batch have short windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg.lapack import dposv

#: the solver's version: effects it fits differ from another version's in the last bits
#: (a snapshot of another version's effects is refitted at restore)
SOLVER = 2
#: a step this small (max norm) ends a user's Newton loop: the MAP of the window
TOLERANCE = 1e-10
#: step halvings tried before a user's loop ends without an improving step
HALVINGS = 20
#: ridge added to the prior's curvature (a singular window with a zero precision)
RIDGE = 1e-9


def sigmoid(eta: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """1 / (1 + e^-eta) through tanh: exact at large |eta|, no overflow warning; into
    ``out`` (which may be ``eta``) with the same bits when given."""
    if out is None:
        return 0.5 * (1.0 + np.tanh(0.5 * eta))
    np.multiply(eta, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out


def step_bound(g_dinv_g: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(B,) an upper bound on the max norm of each user's Newton step H^-1 g, from
    g^T D^-1 g (B,) and the prior's precision d (B, q): H >= D (module docstring)."""
    return np.sqrt(np.maximum(g_dinv_g, 0.0) / d.min(axis=1))


def spd_solve(m: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """(B, n) m[i]^-1 rhs[i] for symmetric positive definite m (B, n, n), rhs (B, n): LAPACK's
    Cholesky (dposv) one matrix at a time, LU where one is not numerically positive
    definite. A matrix's bits never depend on the others; at n = 56 it takes about 70%
    of ``np.linalg.solve``'s time (the factorisation, not the loop, is the cost)."""
    out = np.empty(rhs.shape)
    for i in range(len(m)):
        # m[i].T is m[i]'s Fortran-ordered twin (no copy): its upper triangle is m's lower.
        _, x, info = dposv(m[i].T, rhs[i], lower=0)
        out[i] = x if info == 0 else np.linalg.solve(m[i], rhs[i])
    return out


def bucket(n: int) -> int:
    """The padded length of a window of n >= 1 rows: the next power of two up to 16,
    then the next multiple of 8 (a 50-row window solves 56 x 56 systems, not 64 x 64:
    a third less work, for a few more buckets)."""
    if n <= 16:
        return 1 << max(n - 1, 0).bit_length()
    return -(-n // 8) * 8


def refit_effects(
    z: list[np.ndarray],
    y: list[np.ndarray],
    offset: list[np.ndarray],
    prior_mean: np.ndarray,
    prior_precision: np.ndarray,
    steps: int,
) -> np.ndarray:
    """(U, q) MAP effects of U users: z[u] (n_u, q) design rows, y[u] (n_u,) labels,
    offset[u] (n_u,) fixed logits; prior_mean, prior_precision (U, q). A user with no
    rows gets the prior mean."""
    q = np.asarray(prior_mean).shape[1]
    lengths = np.array([len(r) for r in y], dtype=np.int64)
    if not lengths.sum():
        return np.array(prior_mean, dtype=np.float64)
    return refit_rows(
        np.concatenate([np.reshape(a, (-1, q)) for a in z]),
        np.concatenate(y),
        np.concatenate(offset),
        lengths,
        prior_mean,
        prior_precision,
        steps,
    )


def refit_rows(
    z: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    lengths: np.ndarray,
    prior_mean: np.ndarray,
    prior_precision: np.ndarray,
    steps: int,
    intercept: bool = False,
) -> np.ndarray:
    """``refit_effects`` over users' rows laid end to end: z (N, q), y, offset (N,), and
    ``lengths`` (U,) each user's row count, in order. ``intercept``: z holds (N, q - 1)
    features, each row's design being [1, z] (written straight into the padded rows, any
    float type: no (N, q) float64 copy first)."""
    means = np.asarray(prior_mean, dtype=np.float64)
    lams = np.asarray(prior_precision, dtype=np.float64)
    out = means.copy()
    lengths = np.asarray(lengths, dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    buckets = np.array([bucket(int(n)) for n in lengths.tolist()], dtype=np.int64)
    for length in np.unique(buckets[lengths > 0]).tolist():
        users = np.flatnonzero((buckets == length) & (lengths > 0))
        n = lengths[users]
        # Row j of the k-th user goes to (k, j) of the padded arrays.
        k = np.repeat(np.arange(len(users)), n)
        j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        src = np.repeat(starts[users], n) + j
        zb = np.zeros((len(users), length, means.shape[1]))
        yb, ob, mask = (np.zeros((len(users), length)) for _ in range(3))
        if intercept:
            zb[k, j, 0], zb[k, j, 1:] = 1.0, z[src]
        else:
            zb[k, j] = z[src]
        yb[k, j], ob[k, j], mask[k, j] = y[src], offset[src], 1.0
        out[users] = _newton(_Bucket(zb, yb, ob, mask, means[users], lams[users] + RIDGE), steps)
    return out


@dataclass(frozen=True)
class _Bucket:
    """One bucket's users, padded: z (B, L, q), y, offset, mask (B, L) (padding rows 0),
    mean, d (B, q) the prior's mean and precision with its ridge."""

    z: np.ndarray
    y: np.ndarray
    offset: np.ndarray
    mask: np.ndarray
    mean: np.ndarray
    d: np.ndarray

    def __getitem__(self, pick: np.ndarray | slice) -> _Bucket:
        arrays = (self.z, self.y, self.offset, self.mask, self.mean, self.d)
        return _Bucket(*(a[pick] for a in arrays))


def _objective(beta: np.ndarray, b: _Bucket) -> tuple[np.ndarray, np.ndarray]:
    """(B,) the penalised log-likelihood at beta (B, q), and eta (B, L)."""
    eta = b.offset + (b.z @ beta[:, :, None])[:, :, 0]
    dev = beta - b.mean
    return _log_likelihood(eta, b.y, b.mask) - 0.5 * (b.d * dev * dev).sum(axis=1), eta


def _newton(b: _Bucket, steps: int) -> np.ndarray:
    """One bucket's effects (B, q).

    Every operation is elementwise, a reduction along a user's own axis, or a matmul /
    solve per user (numpy loops over the stacked ones), and a user leaves the active
    set exactly when the one-user loop would stop: a user's bits never depend on the
    others in the bucket. The working arrays hold the active users only (compacted when
    some stop), so no step copies the rows of users that are done."""
    length, q = b.z.shape[1], b.z.shape[2]
    out = b.mean.copy()
    w_: _Work | _DualWork = _DualWork.start(b) if length < q else _Work(b)
    where = np.arange(len(b.y))  # each working row's user
    # A user whose gradient bounds the next step below the tolerance is done.
    keep = w_.gradient_bound() >= TOLERANCE
    for _ in range(steps):
        if not keep.all():  # one compaction a step
            out[where[~keep]] = w_.effects(~keep)
            where = where[keep]
            w_ = w_.subset(keep)
        if not len(where):
            break
        taken, moved = w_.line_search(w_.newton_step())
        # A user stops when no halving improved the objective, the step was tiny, or the
        # next one would be.
        keep = taken & (moved >= TOLERANCE) & (w_.gradient_bound() >= TOLERANCE)
    out[where] = w_.effects(slice(None))
    return out


def _log_likelihood(eta: np.ndarray, y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(B,) sum over each user's rows of y eta - log(1 + e^eta) (padding: 0)."""
    return (mask * (y * eta - np.logaddexp(0.0, eta))).sum(axis=1)


class _Work:
    """The primal form's active users of one bucket (see ``_newton``). ``gradient_bound``
    keeps the curvature weights and gradient at beta for the ``newton_step`` after it."""

    def __init__(
        self,
        b: _Bucket,
        beta: np.ndarray | None = None,
        obj: np.ndarray | None = None,
        eta: np.ndarray | None = None,
        residual: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.b = b
        self.beta = b.mean.copy() if beta is None else beta
        if obj is None or eta is None:
            obj, eta = _objective(self.beta, b)
        self.obj, self.eta = obj, eta
        self.residual = residual

    def effects(self, pick: np.ndarray | slice) -> np.ndarray:
        return self.beta[pick]

    def subset(self, keep: np.ndarray) -> _Work:
        res = None if self.residual is None else (self.residual[0][keep], self.residual[1][keep])
        return _Work(self.b[keep], self.beta[keep], self.obj[keep], self.eta[keep], res)

    def gradient_bound(self) -> np.ndarray:
        """(B,) ``step_bound`` of the Newton step at beta (its weights and gradient kept)."""
        b = self.b
        mu = sigmoid(self.eta)
        w = b.mask * mu * (1.0 - mu)
        r = b.mask * (b.y - mu)
        grad = (r[:, None, :] @ b.z)[:, 0, :] - b.d * (self.beta - b.mean)
        self.residual = (w, grad)
        return step_bound((grad * grad / b.d).sum(axis=1), b.d)

    def newton_step(self) -> np.ndarray:
        """(B, q) H^-1 grad at the current beta (after ``gradient_bound``)."""
        assert self.residual is not None
        b, (w, grad) = self.b, self.residual
        hess = b.z.transpose(0, 2, 1) @ (b.z * w[:, :, None])
        q = hess.shape[1]
        hess[:, np.arange(q), np.arange(q)] += b.d
        return spd_solve(hess, grad)

    def line_search(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Halve each user's step until the objective does not decrease; moves beta, obj
        and eta of those that found one. Returns (taken (B,) bool, the max norm of the
        step taken (B,))."""
        self.residual = None
        n = len(step)
        t = np.ones(n)
        taken = np.zeros(n, dtype=bool)
        todo = np.arange(n)
        for _ in range(HALVINGS):
            if not len(todo):
                break
            every = len(todo) == n  # the usual case: no copy of the rows
            pick = slice(None) if every else todo
            trial = self.beta[pick] + t[pick, None] * step[pick]
            new, new_eta = _objective(trial, self.b if every else self.b[pick])
            ok = new >= self.obj[pick] - 1e-12
            done = todo[ok]
            self.beta[done], self.obj[done], self.eta[done] = trial[ok], new[ok], new_eta[ok]
            taken[done] = True
            todo = todo[~ok]
            t[todo] *= 0.5
        t[~taken] = 0.0
        return taken, t * np.abs(step).max(axis=1)


class _DualWork:
    """The dual form's active users of one bucket: b = m + D^-1 Z^T a, Newton on a (B, L)
    (see the module's docstring). ``kern`` K = Z D^-1 Z^T (B, L, L); ``base`` the logit
    at the prior mean, offset + Z m (B, L); ``k_a`` K a, so eta = base + k_a.
    ``residual``: (S, v, K v) at a, kept by ``gradient_bound`` for ``newton_step``. The
    rows Z stay in the whole bucket ``full`` (``idx``: the active users' places there),
    needed again only for the effects: compacting never copies them."""

    def __init__(
        self,
        full: _Bucket,
        idx: np.ndarray,
        kern: np.ndarray,
        base: np.ndarray,
        a: np.ndarray,
        k_a: np.ndarray,
        obj: np.ndarray,
        residual: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.full, self.idx = full, idx
        self.y, self.mask, self.d = full.y[idx], full.mask[idx], full.d[idx]
        self.kern, self.base, self.a, self.k_a, self.obj = kern, base, a, k_a, obj
        self.residual = residual

    @classmethod
    def start(cls, b: _Bucket) -> _DualWork:
        """From the prior mean (a = 0)."""
        scaled = b.z / np.sqrt(b.d)[:, None, :]  # Z D^-1/2: K is its Gram matrix
        kern = scaled @ scaled.transpose(0, 2, 1)
        base = b.offset + (b.z @ b.mean[:, :, None])[:, :, 0]
        a = np.zeros(base.shape)
        idx = np.arange(len(base))
        return cls(b, idx, kern, base, a, a.copy(), _log_likelihood(base, b.y, b.mask))

    def effects(self, pick: np.ndarray | slice) -> np.ndarray:
        """(n, q) b = m + D^-1 Z^T a of the picked users."""
        a, rows, f = self.a[pick], self.idx[pick], self.full
        return f.mean[rows] + (a[:, None, :] @ f.z[rows])[:, 0, :] / f.d[rows]

    def subset(self, keep: np.ndarray) -> _DualWork:
        res = self.residual
        return _DualWork(
            self.full,
            self.idx[keep],
            self.kern[keep],
            self.base[keep],
            self.a[keep],
            self.k_a[keep],
            self.obj[keep],
            None if res is None else (res[0][keep], res[1][keep], res[2][keep]),
        )

    def gradient_bound(self) -> np.ndarray:
        """(B,) ``step_bound`` of the Newton step at a. The gradient in b is Z^T v with
        v = r - a (r: the residuals y - mu), so g^T D^-1 g = v^T K v."""
        mu = sigmoid(self.base + self.k_a)
        s = np.sqrt(self.mask * mu * (1.0 - mu))
        v = self.mask * (self.y - mu) - self.a
        k_v = (self.kern @ v[:, :, None])[:, :, 0]
        self.residual = (s, v, k_v)
        return step_bound((v * k_v).sum(axis=1), self.d)

    def newton_step(self) -> np.ndarray:
        """(B, L) the step in a: (I + W K) step = r - a, as v - S (I + S K S)^-1 S K v
        (after ``gradient_bound``)."""
        assert self.residual is not None
        s, v, k_v = self.residual
        m = self.kern * s[:, :, None]  # S K S + I, written in place
        m *= s[:, None, :]
        m.reshape(len(m), -1)[:, :: m.shape[1] + 1] += 1.0  # the diagonal alone
        return v - s * spd_solve(m, s * k_v)

    def line_search(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_Work.line_search`` in a. The step taken in b, t D^-1 Z^T step, is bounded
        rather than formed: its max norm is at most t sqrt(step^T K step / min(D))."""
        self.residual = None
        n = len(step)
        k_step = (self.kern @ step[:, :, None])[:, :, 0]
        t = np.ones(n)
        taken = np.zeros(n, dtype=bool)
        todo = np.arange(n)
        for _ in range(HALVINGS):
            if not len(todo):
                break
            pick = slice(None) if len(todo) == n else todo
            a = self.a[pick] + t[pick, None] * step[pick]
            k_a = self.k_a[pick] + t[pick, None] * k_step[pick]
            eta = self.base[pick] + k_a
            ll = _log_likelihood(eta, self.y[pick], self.mask[pick])
            new = ll - 0.5 * (a * k_a).sum(axis=1)
            ok = new >= self.obj[pick] - 1e-12
            done = todo[ok]
            self.a[done], self.k_a[done], self.obj[done] = a[ok], k_a[ok], new[ok]
            taken[done] = True
            todo = todo[~ok]
            t[todo] *= 0.5
        t[~taken] = 0.0
        return taken, t * step_bound((step * k_step).sum(axis=1), self.d)
