"""Online GLMix's inner solve for many users at once: each user's MAP random effect

    maximise  sum_i [y_i eta_i - log(1 + e^eta_i)]  -  1/2 (b - m)^T diag(P) (b - m)
    eta_i = offset_i + z_i^T b

by Newton's method with step halving, from the prior mean m, until the step is below
1e-10 or ``steps`` are taken (``recsys.online.users`` states the model).

Users are solved together in buckets of equal padded length L (the next power of two
of their row count), with masked padding rows that contribute exactly nothing, so a
user's arithmetic depends on their own rows alone: the same bits whichever users share
the batch (replicas batch events differently; they must hold the same effects).

The Newton system H = D + Z^T W Z (q x q, D = diag(P) + 1e-9 I, W = diag(mu (1 - mu)))
is solved in the smaller of two forms:

- primal (L >= q): Cholesky-free LU of the q x q Hessian, as written;
- dual (L < q), by the Woodbury identity with S = W^(1/2) and K = Z D^-1 Z^T (L x L,
  fixed over the steps):  H^-1 g = D^-1 g - D^-1 Z^T S (I + S K S)^-1 S Z D^-1 g,
  whose L x L matrix has eigenvalues >= 1 (well conditioned whatever mu is).

A window of a few rows then costs a few L x L solves, not a q x q one per step: most
users in an impression batch have short windows.
"""

from __future__ import annotations

import numpy as np

#: a step this small (max norm) ends a user's Newton loop: the MAP of the window
TOLERANCE = 1e-10
#: step halvings tried before a user's loop ends without an improving step
HALVINGS = 20
#: ridge added to the prior's curvature (a singular window with a zero precision)
RIDGE = 1e-9


def sigmoid(eta: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-eta) through tanh: exact at large |eta|, no overflow warning."""
    return 0.5 * (1.0 + np.tanh(0.5 * eta))


def bucket(n: int) -> int:
    """The padded length of a window of n >= 1 rows: the next power of two."""
    return 1 << max(n - 1, 0).bit_length()


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
) -> np.ndarray:
    """``refit_effects`` over users' rows laid end to end: z (N, q), y, offset (N,), and
    ``lengths`` (U,) each user's row count, in order."""
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
        zb = np.zeros((len(users), length, z.shape[1]))
        yb, ob, mask = (np.zeros((len(users), length)) for _ in range(3))
        zb[k, j], yb[k, j], ob[k, j], mask[k, j] = z[src], y[src], offset[src], 1.0
        out[users] = _newton(zb, yb, ob, mask, means[users], lams[users], steps)
    return out


def _objective(
    beta: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    mask: np.ndarray,
    mean: np.ndarray,
    lam: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(B,) the penalised log-likelihood at beta (B, q), and eta (B, L)."""
    eta = offset + (z @ beta[:, :, None])[:, :, 0]
    d = beta - mean
    ll = mask * (y * eta - np.logaddexp(0.0, eta))
    return ll.sum(axis=1) - 0.5 * (lam * d * d).sum(axis=1), eta


def _newton(
    z: np.ndarray,
    y: np.ndarray,
    offset: np.ndarray,
    mask: np.ndarray,
    mean: np.ndarray,
    lam: np.ndarray,
    steps: int,
) -> np.ndarray:
    """One bucket: z (B, L, q), y, offset, mask (B, L), mean, lam (B, q) -> (B, q).

    Every operation is elementwise, a reduction along a user's own axis, or a matmul /
    solve per user (numpy loops over the stacked ones), and a user leaves the active
    set exactly when the one-user loop would stop: a user's bits never depend on the
    others in the bucket. The working arrays hold the active users only (compacted when
    some stop), so no step copies the rows of users that are done."""
    length, q = z.shape[1], z.shape[2]
    out = mean.copy()
    w_ = _Work(z, y, offset, mask, mean, lam, dual=length < q)
    where = np.arange(len(y))  # each working row's user
    for _ in range(steps):
        if not len(where):
            break
        step = w_.newton_step()
        taken, moved = w_.line_search(step)
        # A user stops when no halving improved the objective, or the step was tiny.
        keep = taken & (np.abs(moved).max(axis=1) >= TOLERANCE)
        if not keep.all():
            out[where[~keep]] = w_.beta[~keep]
            where = where[keep]
            w_ = w_.subset(keep)
    out[where] = w_.beta
    return out


class _Work:
    """The active users' arrays of one bucket (see ``_newton``)."""

    def __init__(
        self,
        z: np.ndarray,
        y: np.ndarray,
        offset: np.ndarray,
        mask: np.ndarray,
        mean: np.ndarray,
        lam: np.ndarray,
        dual: bool,
        beta: np.ndarray | None = None,
        obj: np.ndarray | None = None,
        eta: np.ndarray | None = None,
        kern: np.ndarray | None = None,
    ) -> None:
        self.z, self.y, self.offset, self.mask, self.mean, self.lam = z, y, offset, mask, mean, lam
        self.dual = dual
        self.d = lam + RIDGE
        # Dual form: K = Z D^-1 Z^T (B, L, L), fixed over the steps.
        if dual and kern is None:
            kern = z @ (z.transpose(0, 2, 1) / self.d[:, :, None])
        self.kern = kern
        self.beta = mean.copy() if beta is None else beta
        if obj is None or eta is None:
            obj, eta = _objective(self.beta, z, y, offset, mask, mean, lam)
        self.obj, self.eta = obj, eta

    def subset(self, keep: np.ndarray) -> _Work:
        return _Work(
            self.z[keep],
            self.y[keep],
            self.offset[keep],
            self.mask[keep],
            self.mean[keep],
            self.lam[keep],
            self.dual,
            self.beta[keep],
            self.obj[keep],
            self.eta[keep],
            None if self.kern is None else self.kern[keep],
        )

    def newton_step(self) -> np.ndarray:
        """(B, q) H^-1 grad at the current beta, in the dual or the primal form."""
        z, d = self.z, self.d
        mu = sigmoid(self.eta)
        w = self.mask * mu * (1.0 - mu)
        r = self.mask * (self.y - mu)
        grad = (r[:, None, :] @ z)[:, 0, :] - self.lam * (self.beta - self.mean)
        if self.kern is not None:
            s = np.sqrt(w)
            g_d = grad / d
            c = s * (z @ g_d[:, :, None])[:, :, 0]
            m = self.kern * s[:, :, None]  # S K S + I, written in place
            m *= s[:, None, :]
            m += np.eye(m.shape[1])
            x = np.linalg.solve(m, c[:, :, None])[:, :, 0]
            return g_d - ((s * x)[:, None, :] @ z)[:, 0, :] / d
        hess = z.transpose(0, 2, 1) @ (z * w[:, :, None])
        q = hess.shape[1]
        hess[:, np.arange(q), np.arange(q)] += d
        return np.linalg.solve(hess, grad[:, :, None])[:, :, 0]

    def line_search(self, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Halve each user's step until the objective does not decrease; moves beta, obj
        and eta of those that found one. Returns (taken (B,) bool, the step taken (B, q))."""
        n = len(step)
        t = np.ones(n)
        taken = np.zeros(n, dtype=bool)
        moved = np.zeros_like(step)
        todo = np.arange(n)
        for _ in range(HALVINGS):
            if not len(todo):
                break
            every = len(todo) == n  # the usual case: no copy of the rows
            pick = slice(None) if every else todo
            trial = self.beta[pick] + t[pick, None] * step[pick]
            new, new_eta = _objective(
                trial,
                self.z[pick],
                self.y[pick],
                self.offset[pick],
                self.mask[pick],
                self.mean[pick],
                self.lam[pick],
            )
            ok = new >= self.obj[pick] - 1e-12
            done = todo[ok]
            moved[done] = t[done, None] * step[done]
            self.beta[done], self.obj[done], self.eta[done] = trial[ok], new[ok], new_eta[ok]
            taken[done] = True
            todo = todo[~ok]
            t[todo] *= 0.5
        return taken, moved
