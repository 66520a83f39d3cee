"""The rungs' statistic through a PCA on padded batches (what a model's base layer runs):
each rung's own way equals the statistic written out and then projected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embeddings.rungs import (
    Rung,
    batch_word_counts,
    batch_word_sums,
    nearest_word,
    nearest_words,
    rung,
)


def _case(
    seed: int, b: int, t: int, k: int, d: int, dim: int, scale: float
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, t, d, generator=g) * scale
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    lengths[0] = 0  # a video without frames
    if b > 1:
        lengths[1] = 1  # one frame
    mask = (torch.arange(t).unsqueeze(0) < lengths.unsqueeze(1)).float()
    frames[mask == 0] = torch.randn(int((mask == 0).sum()), d, generator=g) * 50  # garbage
    codebook = torch.randn(k, d, generator=g) * scale
    idf = torch.rand(k, generator=g) + 0.5
    raw = k * d  # vlad's statistic
    mean = torch.randn(raw, generator=g) * 0.1
    components = torch.linalg.qr(torch.randn(raw, dim, generator=g))[0].T.contiguous()
    return frames, mask, codebook, idf, mean, components


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    b=st.integers(1, 6),
    t=st.integers(1, 9),
    k=st.integers(1, 7),
    d=st.integers(1, 12),
    dim=st.integers(1, 5),
    scale=st.sampled_from([1e-3, 1.0, 30.0]),
)
def test_vlads_projection_equals_the_written_out_statistic_projected(
    seed: int, b: int, t: int, k: int, d: int, dim: int, scale: float
) -> None:
    """Each word's residual normalised inside its own product (no (B, K * D) rows
    normalised, centred and multiplied) gives the generic ``(batch - mean) @ C.T``:
    empty videos, one-frame videos, words no frame chose (a zero residual) and garbage
    in the padding included."""
    dim = min(dim, k * d)
    frames, mask, codebook, idf, mean, components = _case(seed, b, t, k, d, dim, scale)
    vlad = rung("vlad_kmeans")
    want = Rung.projected(vlad, frames, mask, codebook, idf, mean, components)
    got = vlad.projected(frames, mask, codebook, idf, mean, components)
    assert got.shape == (b, dim)
    tol = 1e-5 * max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, atol=tol, rtol=1e-5)


def words_one_hot(frames: torch.Tensor, mask: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """(B, T, K) one-hot of each real frame's nearest word (zero rows for padding): the
    product form ``batch_word_sums`` replaced, kept as its reference."""
    hot = torch.nn.functional.one_hot(nearest_words(frames, codebook), codebook.shape[0])
    return hot.to(frames.dtype) * mask.unsqueeze(-1)


def test_an_empty_video_projects_to_minus_the_projected_mean() -> None:
    frames, mask, codebook, idf, mean, components = _case(3, 3, 5, 4, 6, 3, 1.0)
    got = rung("vlad_kmeans").projected(frames, mask, codebook, idf, mean, components)
    torch.testing.assert_close(got[0], -(mean @ components.T), atol=1e-6, rtol=0)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_the_nearest_word_is_the_argmin_of_the_full_distance(scale: float) -> None:
    """Doubling the centres instead of the frames leaves the nearest word as the full
    squared distance has it (numpy, catalogue side) and as the batch side finds it."""
    rng = np.random.default_rng(5)
    frames = (rng.normal(size=(300, 16)) * scale).astype(np.float32)
    codebook = (rng.normal(size=(9, 16)) * scale).astype(np.float32)
    full = ((frames[:, None, :].astype(np.float64) - codebook[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_word(frames, codebook, chunk=64), full)
    hot = words_one_hot(
        torch.from_numpy(frames)[None], torch.ones(1, 300), torch.from_numpy(codebook)
    )
    np.testing.assert_array_equal(hot[0].argmax(1).numpy(), full)


@settings(max_examples=30, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=12),
    d=st.integers(1, 7),
    seed=st.integers(0, 1000),
)
def test_run_sums_are_the_bits_of_one_float64_reduceat(
    lengths: list[int], d: int, seed: int
) -> None:
    """Each run summed row after row in float64: the same bits as numpy's reduceat with
    a float64 accumulator (what the rungs' sums were), one-row runs included."""
    from embeddings.rungs import _run_sums

    x = (np.random.default_rng(seed).normal(size=(sum(lengths), d)) * 1e3).astype(np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    got = _run_sums(x, starts, starts + np.asarray(lengths))
    want = np.add.reduceat(x, starts, axis=0, dtype=np.float64)
    np.testing.assert_array_equal(got, want)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    k=st.integers(1, 6),
    d=st.integers(1, 5),
    seed=st.integers(0, 1000),
    padding=st.sampled_from([0.0, float("nan"), 7.0]),
)
def test_word_sums_are_the_one_hot_product(
    lengths: list[int], k: int, d: int, seed: int, padding: float
) -> None:
    """Each real frame added into its nearest word's row equals the one-hot (B, K, T)
    product with the frames (padding of zeros, NaN or values adds nothing; an empty
    video sums to zeros), and the counts are the one-hot's."""
    rng = np.random.default_rng(seed)
    t = max(max(lengths), 1)
    frames = torch.full((len(lengths), t, d), padding, dtype=torch.float32)
    mask = torch.zeros(len(lengths), t, dtype=torch.bool)
    for i, n in enumerate(lengths):
        frames[i, :n] = torch.from_numpy(rng.normal(size=(n, d)).astype(np.float32))
        mask[i, :n] = True
    codebook = torch.from_numpy(rng.normal(size=(k, d)).astype(np.float32))
    sums, counts = batch_word_sums(frames, mask, codebook)
    real = frames.masked_fill(~mask.unsqueeze(-1), 0.0)
    hot = words_one_hot(real, mask.float(), codebook)
    torch.testing.assert_close(sums, hot.transpose(1, 2) @ real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(counts, hot.sum(1))
    torch.testing.assert_close(batch_word_counts(frames, mask, codebook), hot.sum(1))


def test_vlads_projection_ignores_nan_and_inf_in_the_padding() -> None:
    """Padding reaches only the cell that is dropped: NaN or inf there changes nothing."""
    frames, mask, codebook, idf, mean, components = _case(7, 5, 8, 6, 10, 4, 1.0)
    vlad = rung("vlad_kmeans")
    clean = frames * mask.unsqueeze(-1)
    want = vlad.projected(clean, mask, codebook, idf, mean, components)
    dirty = clean.clone()
    pad = mask == 0
    dirty[pad] = float("nan")
    dirty[pad.nonzero()[:1].unbind(1)] = float("inf")
    got = vlad.projected(dirty, mask, codebook, idf, mean, components)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_words_given_are_the_words_used() -> None:
    """A base that is handed each frame's word (found once per frame before training)
    gives what it gives finding them itself, and reads the words it is given: other words,
    the statistic of those (the cells' product against the written-out residuals)."""
    frames, mask, codebook, idf, mean, components = _case(21, 6, 9, 5, 8, 4, 1.0)
    vlad = rung("vlad_kmeans")
    found = nearest_words(frames, codebook)
    itself = vlad.projected(frames, mask, codebook, idf, mean, components)
    given = vlad.projected(frames, mask, codebook, idf, mean, components, found)
    torch.testing.assert_close(given, itself, atol=0, rtol=0)
    other = (found + 1) % codebook.shape[0]
    want = Rung.projected(vlad, frames, mask, codebook, idf, mean, components, other)
    got = vlad.projected(frames, mask, codebook, idf, mean, components, other)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, itself, atol=1e-3)
    hot = torch.nn.functional.one_hot(other, codebook.shape[0]).float() * mask.unsqueeze(-1)
    torch.testing.assert_close(batch_word_counts(frames, mask, codebook, other), hot.sum(1))
    with pytest.raises(ValueError, match="words must be"):
        vlad.projected(frames, mask, codebook, idf, mean, components, other[:, :-1])
