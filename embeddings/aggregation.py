"""The aggregation of the cluster layers (sections 3.2-3.3): S_x = P^T X by one batched
matmul, then the tail (centring of Eq. 13, smoothing of Eq. 10, intra and final norms).

Without gradients on the CPU the tail runs a few videos at a time in place
(``CHUNK_BYTES``); with gradients it runs the same way forwards and backwards through
``_ClusterTail``, whose backward is the tail's derivative written out. Both are tested
equal to the whole-batch autograd path (``_aggregate_rows``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from embeddings.options import NORM_EPS
from embeddings.stats import MASS_EPS


def _l2_normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """L2-normalise along ``dim``; in place when no gradient is needed (saves a (B, K, D) copy)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.normalize(x, dim=dim, eps=NORM_EPS)
    norms = torch.linalg.vector_norm(x, dim=dim, keepdim=True).clamp_min_(NORM_EPS)
    return x.mul_(norms.reciprocal_())  # one division a row, then a multiply a value


#: bytes of the (c, K, D) slab one inference chunk aggregates: small enough that the
#: tail's passes over it (centring or smoothing, norms, scaling) run in the cores' caches
#: rather than in memory, which bounds the layer once the matmuls are fast
CHUNK_BYTES = 4 << 20


def aggregate(
    posteriors: torch.Tensor,
    frames: torch.Tensor,
    centres: torch.Tensor | None,
    mode: str,
    gamma: float = 0.0,
    intra_norm: bool = False,
    final_norm: bool = False,
) -> torch.Tensor:
    """Cluster aggregation from ``posteriors (B, T, K)`` (already masked) and ``frames (B, T, D)``.

    ``mode``: "residual" (Eq. 13), "smoothed_mean" (Eq. 10) or "sum" (S_x). Returns (B, K * D).
    Without gradients on the CPU it runs a few videos at a time (``CHUNK_BYTES``) into
    one output, the same operations on each video (tested equal to the whole-batch pass).
    """
    if mode not in ("residual", "smoothed_mean", "sum"):
        raise ValueError(f"unknown aggregation mode {mode!r}")
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (posteriors, frames, centres)
    )
    b, _, k = posteriors.shape
    d = frames.shape[-1]
    chunk = max(1, CHUNK_BYTES // max(1, k * d * frames.element_size()))
    # (autocast picks the products' type itself: it writes no given output)
    autocast = torch.is_autocast_enabled(frames.device.type)
    if frames.device.type != "cpu" or chunk >= b:
        return _aggregate_rows(posteriors, frames, centres, mode, gamma, intra_norm, final_norm)
    if needs_grad:
        # S_x by one bmm; the tail a few videos at a time, also backwards (_ClusterTail)
        s = torch.bmm(posteriors.transpose(1, 2), frames)
        n = posteriors.sum(1) if mode != "sum" else None
        tail = _ClusterTail.apply(s, n, centres, (mode, gamma, intra_norm, final_norm), chunk)
        return tail.reshape(b, -1)
    if autocast:
        return _aggregate_rows(posteriors, frames, centres, mode, gamma, intra_norm, final_norm)
    out = torch.empty(b, k, d, dtype=frames.dtype, device=frames.device)
    for i in range(0, b, chunk):
        rows = slice(i, i + chunk)
        # S_x straight into the output's rows, whose tail passes then find them in cache
        _aggregate_rows(
            posteriors[rows], frames[rows], centres, mode, gamma, intra_norm, final_norm, out[rows]
        )
    return out.reshape(b, -1)


def _aggregate_rows(
    posteriors: torch.Tensor,
    frames: torch.Tensor,
    centres: torch.Tensor | None,
    mode: str,
    gamma: float,
    intra_norm: bool,
    final_norm: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``aggregate`` of a batch in one pass: S_x = P^T X by one bmm (into ``out`` (B, K, D)
    when given), then the tail in place."""
    b = frames.shape[0]
    pt = posteriors.transpose(1, 2)
    if not (torch.is_grad_enabled() and pt.requires_grad):
        # laid out contiguous first: a small (B, K, T) copy that the bf16 kernels need to
        # run at speed (2x measured at K = 32, T = 210) and fp32 ones like too
        pt = pt.contiguous()
    out = torch.bmm(pt, frames, out=out)  # S_x: (B, K, D)
    n = posteriors.sum(1) if mode != "sum" else None
    return _tail(out, n, centres, mode, gamma, intra_norm, final_norm).reshape(b, -1)


def _tail(
    out: torch.Tensor,
    n_bk: torch.Tensor | None,
    centres: torch.Tensor | None,
    mode: str,
    gamma: float,
    intra_norm: bool,
    final_norm: bool,
) -> torch.Tensor:
    """From S_x ``out (B, K, D)`` (changed in place) and the masses ``n_bk (B, K)`` to the
    layer's (B, K, D) output: centring or smoothing (Eq. 13 / Eq. 10), then the norms."""
    b = out.shape[0]
    out = _centre(out, n_bk, centres, mode, gamma, intra_norm)
    if intra_norm:
        out = _l2_normalize(out, dim=-1)
    if final_norm:
        out = _l2_normalize(out.reshape(b, -1), dim=-1).reshape(out.shape)
    return out


def _centre(
    out: torch.Tensor,
    n_bk: torch.Tensor | None,
    centres: torch.Tensor | None,
    mode: str,
    gamma: float,
    intra_norm: bool,
) -> torch.Tensor:
    """``_tail`` before the norms: V (B, K, D) from S_x, in place."""
    if mode == "residual":
        assert centres is not None and n_bk is not None
        n = n_bk.unsqueeze(-1)  # (B, K, 1)
        out = out.addcmul_(n, centres, value=-1.0)  # S_x - n mu, no temporary
    elif mode == "smoothed_mean":
        assert centres is not None and n_bk is not None
        n = n_bk.unsqueeze(-1)
        if gamma > 0:
            out = out.add_(centres, alpha=gamma)  # S_x + gamma mu
            # Intra-norm removes any positive per-cluster scale, so 1 / (n + gamma) only
            # matters without it; skipping it saves a full pass over (B, K, D).
            if not intra_norm:
                out = out.div_(n + gamma)
        else:
            # gamma = 0: the ML mean, mu + (S_x - n mu) / n, falling back to mu when n ~ 0.
            out = out.addcmul_(n, centres, value=-1.0).div_(n.clamp_min(MASS_EPS)).add_(centres)
    return out


class _ClusterTail(torch.autograd.Function):
    """``_tail`` with gradients, ``chunk`` videos at a time both ways, in place.

    Through autograd each of the tail's elementwise steps reads and writes a whole
    (B, K, D) tensor (268 MB at the paper's size) into fresh memory, and keeps several for
    the backward pass: most of a training step went there. Here the forward runs the
    in-place tail on a few videos at a time (returning S_x's own storage) and keeps the
    output and the norms; the backward is the tail's derivative written out, in place on a
    few videos at a time, and one product for the centres' gradient.

    With ``y`` the output, ``r`` a norm and ``g`` the incoming gradient: through
    y = u / max(|u|, eps), du = (g - [|u| >= eps] y <y, g>) / max(|u|, eps); then through
    the centring of each mode (``_centre``), by hand (tested against autograd)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(
        ctx: Any,
        s: torch.Tensor,
        n: torch.Tensor | None,
        centres: torch.Tensor | None,
        how: tuple[str, float, bool, bool],
        chunk: int,
    ) -> torch.Tensor:
        mode, gamma, intra, final = how
        b, k, _ = s.shape
        r1 = torch.empty(b, k, dtype=torch.float32) if intra else None
        r2 = torch.empty(b, dtype=torch.float32) if final else None
        # in the products' type (bfloat16 under autocast): mixed types take slow kernels
        mu = None if centres is None else centres.to(s.dtype)
        mass = None if n is None else n.to(s.dtype)
        for i in range(0, b, chunk):
            rows = slice(i, i + chunk)
            v = _centre(s[rows], None if mass is None else mass[rows], mu, mode, gamma, intra)
            if r1 is not None:  # per cluster
                r1[rows] = _normalize_rows(v)
            if r2 is not None:  # per video
                r2[rows] = _normalize_rows(v.reshape(v.shape[0], -1))
        ctx.mark_dirty(s)
        ctx.save_for_backward(s, n, centres, r1, r2)
        ctx.how, ctx.chunk = how, chunk
        return s

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        y, n, centres, r1, r2 = ctx.saved_tensors
        want_n, want_c = ctx.needs_input_grad[1:3]
        gs = torch.empty_like(y)
        gn = torch.zeros_like(n) if n is not None else None
        weight = torch.zeros_like(n) if want_c and n is not None else None  # for d mu
        mu = None if centres is None else centres.to(y.dtype)
        for i in range(0, y.shape[0], ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            w = _tail_grad(grad[rows], y[rows], gs[rows], n, mu, r1, r2, rows, ctx.how, gn)
            if weight is not None and w is not None:
                weight[rows] = w
        gc = None
        if weight is not None:  # d mu_k = sum_b weight_bk dS_bk (one product)
            gc = torch.einsum("bk,bkd->kd", weight.to(gs.dtype), gs).to(centres.dtype)
        return gs, gn if want_n else None, gc, None, None


def _normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """x / max(|x|, eps) along the last dimension, in place; returns |x| (float32), which
    the backward pass needs (``_l2_normalize`` keeps only the clamped norm)."""
    norms = torch.linalg.vector_norm(x, dim=-1).float()
    x.mul_(_per_row(norms.clamp_min(NORM_EPS).reciprocal(), x))
    return norms


def _per_row(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A float32 factor per row (c, K) or per video (c,), broadcastable over ``like``'s
    last dimension, in ``like``'s type."""
    return x.unsqueeze(-1).to(like.dtype)


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot products along the last dimension, as float32."""
    return torch.linalg.vecdot(a, b).float()


def _tail_grad(
    g: torch.Tensor,
    y: torch.Tensor,
    gs: torch.Tensor,
    n_all: torch.Tensor | None,
    mu: torch.Tensor | None,
    r1_all: torch.Tensor | None,
    r2_all: torch.Tensor | None,
    rows: slice,
    how: tuple[str, float, bool, bool],
    gn_all: torch.Tensor | None,
) -> torch.Tensor | None:
    """One chunk of ``_ClusterTail.backward``: dS into ``gs`` (c, K, D), dn into
    ``gn_all[rows]``; returns the weights w (c, K) with d mu = sum_b w dS. ``mu``: the
    centres in the products' type."""
    mode, gamma, intra, _ = how
    c = y.shape[0]
    src = g  # each step reads the last one's result (the first reads g) and writes gs
    scale = torch.ones(c, 1, dtype=torch.float32)  # U = y * scale (the final norm undone)
    if r2_all is not None:
        r2 = r2_all[rows]
        flat_y, flat_g = y.reshape(c, -1), gs.reshape(c, -1)
        a = _rowdot(flat_y, src.reshape(c, -1)) * (r2 >= NORM_EPS)
        torch.addcmul(src.reshape(c, -1), flat_y, _per_row(a, y), value=-1.0, out=flat_g)
        flat_g.mul_(_per_row(r2.clamp_min(NORM_EPS).reciprocal(), y))
        scale, src = r2.clamp_min(NORM_EPS).unsqueeze(-1), gs
    vscale = scale  # V = y * vscale
    if r1_all is not None:
        r1 = r1_all[rows]
        a = _rowdot(y, src) * scale.square() * (r1 >= NORM_EPS)
        torch.addcmul(src, y, _per_row(a, y), value=-1.0, out=gs)
        gs.mul_(_per_row(r1.clamp_min(NORM_EPS).reciprocal(), y))
        vscale, src = scale * r1.clamp_min(NORM_EPS), gs
    if src is g:
        gs.copy_(g)
    if mode == "sum":
        return None
    assert n_all is not None and mu is not None and gn_all is not None
    n = n_all[rows].float()
    if mode == "residual":  # V = S - n mu
        gn_all[rows] = -_rowdot(gs, mu)
        return -n
    if gamma > 0:
        if intra:  # V = S + gamma mu (the scale, skipped, changes no output)
            return torch.full_like(n, gamma)
        q = (n + gamma).reciprocal()  # V = (S + gamma mu) q
        gn_all[rows] = -q * vscale * _rowdot(gs, y)
        gs.mul_(_per_row(q, gs))
        return torch.full_like(n, gamma)
    # gamma = 0: V = (S - n mu) / m + mu, m = max(n, MASS_EPS)
    m = n.clamp_min(MASS_EPS)
    g_mu = _rowdot(gs, mu)
    g_v = vscale * _rowdot(gs, y)
    gn_all[rows] = -g_mu / m - (n >= MASS_EPS) * (g_v - g_mu) / n.clamp_min(MASS_EPS)
    gs.mul_(_per_row(m.reciprocal(), gs))
    return m - n
