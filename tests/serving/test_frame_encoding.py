"""The published base64 pattern and the server's decoder accept exactly the same strings."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.frame_encoding import (
    VALUE_LIMIT,
    FrameDecodeError,
    decode_frames_b64,
    frames_b64_pattern,
    max_b64_length,
)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _accepted(text: str, dim: int, dtype: str) -> bool:
    try:
        decode_frames_b64(text, dim, dtype)
    except FrameDecodeError:
        return False
    return True


def _flip_padding_bit(text: str) -> str:
    """The same bytes with a non-zero padding bit: valid to a lax decoder, not canonical."""
    stripped = text.rstrip("=")
    last = ALPHABET[ALPHABET.index(stripped[-1]) ^ 1]
    return stripped[:-1] + last + "=" * (len(text) - len(stripped))


@st.composite
def uploads(draw: st.DrawFn) -> tuple[str, int, str]:
    dim = draw(st.integers(1, 9))
    dtype = draw(st.sampled_from(["float32", "uint8"]))
    if dtype == "float32" and draw(st.booleans()):
        # plausible floats around the bound, NaN and inf included
        n = draw(st.integers(0, 3 * dim + 2))
        values = draw(
            st.lists(
                st.one_of(
                    st.floats(width=32),
                    st.sampled_from([VALUE_LIMIT, -VALUE_LIMIT, 2.0**20 - 0.0625, 3e38]),
                ),
                min_size=n,
                max_size=n,
            )
        )
        raw = np.asarray(values, dtype="<f4").tobytes()
    else:
        raw = draw(st.binary(max_size=4 * 3 * dim + 5))
    text = base64.b64encode(raw).decode()
    if text.endswith("=") and draw(st.booleans()):
        text = _flip_padding_bit(text)
    return text, dim, dtype


@settings(max_examples=400, deadline=None)
@given(uploads())
def test_pattern_matches_exactly_what_the_decoder_accepts(upload: tuple[str, int, str]) -> None:
    text, dim, dtype = upload
    assert bool(re.fullmatch(frames_b64_pattern(dim, dtype), text)) == _accepted(text, dim, dtype)


@pytest.mark.parametrize("dim", [1, 2, 3, 4, 8, 1024])
def test_every_string_drawn_from_the_pattern_is_accepted(dim: int) -> None:
    # What a schema-driven client generates from the pattern must decode to whole frames.
    strategy = st.from_regex(frames_b64_pattern(dim, "float32"), fullmatch=True)

    @settings(
        max_examples=30 if dim < 1024 else 5,
        deadline=None,
        # one 1024-value frame is a large smallest example, by nature
        suppress_health_check=[HealthCheck.large_base_example, HealthCheck.too_slow],
    )
    @given(strategy)
    def check(text: str) -> None:
        frames = decode_frames_b64(text, dim, "float32")
        assert frames.shape[1] == dim and frames.shape[0] >= 1
        assert (np.abs(frames) < VALUE_LIMIT).all()

    check()


def test_decoder_edge_cases() -> None:
    dim = 3
    x = np.array([[0.0, -1.5, 2.0**20 - 0.0625], [1e-40, -0.0, 7.0]], "<f4")
    out = decode_frames_b64(base64.b64encode(x.tobytes()).decode(), dim, "float32")
    np.testing.assert_array_equal(out, x)
    for bad, needle in [
        (np.array([[np.nan, 0, 0]], "<f4"), "|x| < 2^20"),
        (np.array([[np.inf, 0, 0]], "<f4"), "|x| < 2^20"),
        (np.array([[2.0**20, 0, 0]], "<f4"), "|x| < 2^20"),
        (np.array([[0, 0]], "<f4"), "not a positive multiple"),
    ]:
        with pytest.raises(FrameDecodeError, match=re.escape(needle)):
            decode_frames_b64(base64.b64encode(bad.tobytes()).decode(), dim, "float32")
    with pytest.raises(FrameDecodeError, match="not a positive multiple"):
        decode_frames_b64("", dim, "uint8")
    with pytest.raises(FrameDecodeError, match="not valid base64"):
        decode_frames_b64("AA A", dim, "uint8")
    u8 = np.arange(6, dtype=np.uint8).reshape(2, 3)
    np.testing.assert_array_equal(
        decode_frames_b64(base64.b64encode(u8.tobytes()).decode(), dim, "uint8"), u8
    )


def test_max_length_covers_the_largest_allowed_upload() -> None:
    dim, frames = 5, 7
    biggest = base64.b64encode(np.zeros((frames, dim), "<f4").tobytes()).decode()
    assert len(biggest) == max_b64_length(frames, dim, "float32")
    assert len(biggest) + 4 > max_b64_length(frames, dim, "float32")
