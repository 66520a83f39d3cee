"""The compact frame upload: base64 of row-major little-endian float32 or uint8 bytes.

The OpenAPI schema publishes, for the artifact's feature dimension D, a regular expression
that matches exactly the strings the service accepts: canonical base64 (standard alphabet,
``=`` padding, zero padding bits) of a positive whole number of frames, and for float32
only values with |x| < 2^20. A client or a fuzzer that follows the schema is therefore never
refused, and ``decode_frames_b64`` enforces the same language on the server.

How the value bound becomes a regular expression: |x| < 2^20 exactly when the float's
biased exponent is at most 146; its 8 bits are, in little-endian order, the low 7 bits of
byte 3 and the top bit of byte 2. Three floats are 12 bytes, i.e. 16 base64 characters of 6 bits each,
so every exponent bit lands in a known character, and "exponent <= e" becomes a short
alternation of character classes. The bound |x| < 2^20 excludes NaN and inf and the huge
finite values that would overflow inside the pooling.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from functools import cache

import numpy as np

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ANY = "[A-Za-z0-9+/]"
ITEMSIZE = {"float32": 4, "uint8": 1}


class FrameDecodeError(ValueError):
    """The upload is not canonical base64 of whole, finite frames (message names the problem)."""


def _char_class(values: set[int]) -> str:
    """A regex class matching the base64 characters whose 6-bit values are in ``values``."""
    if len(values) == 64:
        return ANY
    chars = sorted(ALPHABET[v] for v in values)
    parts: list[str] = []
    i = 0
    while i < len(chars):  # compress ASCII runs: [A-Z] rather than 26 letters
        j = i
        while j + 1 < len(chars) and ord(chars[j + 1]) == ord(chars[j]) + 1:
            j += 1
        lo, hi = re.escape(chars[i]), re.escape(chars[j])
        parts.append(lo if i == j else lo + hi if j == i + 1 else f"{lo}-{hi}")
        i = j + 1
    return "[" + "".join(parts) + "]"


#: float32 values must satisfy |x| < 2**20: biased exponent <= 127 + 19. NaN and inf
#: (exponent 255) are excluded with it, and so are finite values so large that the
#: pooling's squared distances would overflow float32.
VALUE_LIMIT = 2.0**20
MAX_BIASED_EXPONENT = 127 + 19


def _float_block(n_floats: int) -> str:
    """Regex for ``n_floats`` (1-3) float32 values with |x| < 2**20 starting at a 12-byte
    boundary, with the zero padding bits and ``=`` padding of canonical base64 when n < 3."""
    n_chars = math.ceil(32 * n_floats / 6)
    pad_bits = 6 * n_chars - 32 * n_floats
    free = [set(range(64)) for _ in range(n_chars)]
    if pad_bits:
        free[-1] = {v for v in range(64) if v % (1 << pad_bits) == 0}
    bound = [(MAX_BIASED_EXPONENT >> (7 - i)) & 1 for i in range(8)]  # MSB first
    pieces: list[str] = []
    start = 0
    for k in range(n_floats):
        # Stream positions (MSB first within each byte) of the exponent bits, MSB first:
        # the low 7 bits of byte 3, then the top bit of byte 2.
        positions = [32 * k + b for b in range(25, 32)] + [32 * k + 16]
        # exponent <= bound: equal to it, or equal up to a 1 of the bound where it has 0.
        # These alternatives are mutually exclusive, so a match never backtracks.
        fixings = [list(zip(positions, bound, strict=True))]
        for p, bit in enumerate(bound):
            if bit:
                fixings.append([*zip(positions[:p], bound[:p], strict=True), (positions[p], 0)])
        chars_of = {divmod(b, 6)[0] for b in positions}
        end = n_chars - 1 if k == n_floats - 1 else max(chars_of)
        alternatives = []
        for fixed in fixings:
            mask = dict.fromkeys(range(start, end + 1), 0)
            want = dict.fromkeys(range(start, end + 1), 0)
            for b, bit in fixed:
                c, j = divmod(b, 6)
                mask[c] |= 1 << (5 - j)
                want[c] |= bit << (5 - j)
            alternatives.append(
                "".join(
                    _char_class({v for v in free[i] if v & mask[i] == want[i]})
                    for i in range(start, end + 1)
                )
            )
        pieces.append("(?:" + "|".join(alternatives) + ")")
        start = end + 1
    return "".join(pieces) + "=" * ((3 - (4 * n_floats) % 3) % 3)


def _byte_block(n_bytes: int) -> str:
    """Regex for ``n_bytes`` (1-2) trailing bytes: canonical base64 with its ``=`` padding."""
    if n_bytes == 1:
        return ANY + _char_class({v for v in range(64) if v % 16 == 0}) + "=="
    return ANY * 2 + _char_class({v for v in range(64) if v % 4 == 0}) + "="


@cache
def frames_b64_pattern(dim: int, dtype: str) -> str:
    """Regex (anchored) matching exactly the uploads ``decode_frames_b64`` accepts."""
    if dim < 1 or dtype not in ITEMSIZE:
        raise ValueError(f"bad dim {dim} or dtype {dtype}")
    # Items per repeating unit: 3 floats = 16 characters, or 3 bytes = 4 characters.
    per_unit = 3
    unit = _float_block(3) if dtype == "float32" else ANY + "{4}"

    def tail(items: int) -> str:
        full, rest = divmod(items, per_unit)
        s = f"(?:{unit}){{{full}}}" if full else ""
        if rest:
            s += _float_block(rest) if dtype == "float32" else _byte_block(rest)
        return s

    # A whole number of frames: m*dim items with m >= 1. Units of lcm(dim, 3) items repeat;
    # what is left is j*dim items for j in 0..lcm/dim - 1.
    period = dim * 3 // math.gcd(dim, 3)
    frames_per_period = period // dim
    body = f"(?:(?:{unit}){{{period // per_unit}}})"
    tails = [tail(j * dim) for j in range(1, frames_per_period)]
    if tails:
        alt = "|".join(tails)
        return f"^(?:{body}+(?:{alt})?|(?:{alt}))$"
    return f"^{body}+$"


def max_b64_length(max_frames: int, dim: int, dtype: str) -> int:
    return 4 * math.ceil(max_frames * dim * ITEMSIZE[dtype] / 3)


def decode_frames_b64(text: str, dim: int, dtype: str) -> np.ndarray:
    """Canonical base64 -> (num_frames, dim) array (float32 or uint8); the schema's language.

    Raises FrameDecodeError with a one-line message naming the problem.
    """
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FrameDecodeError("frames_b64: not valid base64") from None
    # validate=True checked the alphabet and padding; only the last quantum can carry
    # non-zero padding bits, so re-encode just that (not the whole upload).
    tail = len(raw) % 3
    if tail and base64.b64encode(raw[-tail:]).decode("ascii") != text[-4:]:
        raise FrameDecodeError("frames_b64: not canonical base64 (padding bits must be zero)")
    row = dim * ITEMSIZE[dtype]
    if len(raw) == 0 or len(raw) % row:
        raise FrameDecodeError(
            f"frames_b64: {len(raw)} bytes is not a positive multiple of one frame "
            f"({dim} values x {ITEMSIZE[dtype]} bytes = {row})"
        )
    if dtype == "uint8":
        return np.frombuffer(raw, np.uint8).reshape(-1, dim)
    arr = np.frombuffer(raw, "<f4").reshape(-1, dim)
    if not (np.abs(arr) < VALUE_LIMIT).all():  # NaN compares false: refused too
        raise FrameDecodeError("frames_b64: values must be finite with |x| < 2^20")
    return arr.astype(np.float32)
