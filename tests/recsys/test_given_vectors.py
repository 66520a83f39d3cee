"""A vector per video given by the platform (the ``embedding`` column): the contract's
checks, its decoding as one-frame videos, and the embedder that ships it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.dataset import decode_video_batch, video_column
from recsys.embedders import GivenEmbedder, is_given, unit_rows
from recsys.errors import DatasetError, UserInputError
from recsys.validation import check_videos_schema, validate_videos


def _table(vectors: list[list[float]] | np.ndarray, value_type: pa.DataType = pa.float32()):
    ids = [f"v{i}" for i in range(len(vectors))]
    col = pa.array([list(map(float, v)) for v in vectors], pa.list_(value_type))
    return pa.table({"video_id": ids, "embedding": col})


def test_a_vector_set_is_valid_and_decodes_as_one_frame_videos() -> None:
    x = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    t = _table(x)
    summary, problems = validate_videos(t.schema, t.to_batches(3))
    assert problems == []
    assert (summary.kind, summary.feature_dim, summary.num_videos) == ("embedding", 5, 7)
    assert video_column(t.schema.names) == "embedding"
    vb = decode_video_batch(t.slice(2, 4))  # a slice: offsets into the parent respected
    assert vb.video_ids == ["v2", "v3", "v4", "v5"]
    np.testing.assert_array_equal(vb.offsets, [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(vb.frames, x[2:6])


def test_float64_and_fixed_size_vectors_are_accepted() -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) + 1
    t64 = _table(x, pa.float64())
    fixed = pa.table(
        {
            "video_id": ["a", "b", "c", "d"],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 3),
        }
    )
    for t in (t64, fixed):
        assert validate_videos(t.schema, t.to_batches())[1] == []
        np.testing.assert_array_equal(decode_video_batch(t).frames, x.astype(np.float32))


def test_each_bad_vector_is_one_line_naming_the_video() -> None:
    t = pa.table(
        {
            "video_id": ["ok", "short", "nan", "zero", "null"],
            "embedding": pa.array(
                [[1.0, 2.0], [1.0], [np.nan, 1.0], [0.0, -0.0], None], pa.list_(pa.float32())
            ),
        }
    )
    _, problems = validate_videos(t.schema, t.to_batches(2))
    assert problems == [
        "embedding: video 'short' has 1 values, expected 2",
        "embedding: video 'nan' contains NaN or inf values",
        "embedding: video 'zero' is all zeros (no direction)",
        "embedding: video 'null' has no vector (null)",
    ]
    with pytest.raises(DatasetError, match="'short' has 1 values, expected D = 2"):
        decode_video_batch(t.slice(0, 2))


def test_a_file_gives_videos_one_way_and_the_type_is_checked() -> None:
    both = pa.schema(
        [
            ("video_id", pa.string()),
            ("frames", pa.list_(pa.list_(pa.float32()))),
            ("embedding", pa.list_(pa.float32())),
        ]
    )
    assert "drop one" in check_videos_schema(both)[0]
    ints = pa.schema([("video_id", pa.string()), ("embedding", pa.list_(pa.int32()))])
    assert check_videos_schema(ints) == [
        "embedding: expected list<float32>, found list<item: int32>"
    ]
    neither = pa.schema([("video_id", pa.string())])
    assert "or an embedding column" in check_videos_schema(neither)[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_subnormal=True, width=32),
        min_size=1,
        max_size=9,
    ).filter(any)
)
def test_unit_rows_have_unit_length_and_keep_the_direction(values: list[float]) -> None:
    x = np.asarray([values], dtype=np.float32)
    u = unit_rows(x)
    assert u.dtype == np.float32
    assert np.linalg.norm(u.astype(np.float64)) == pytest.approx(1.0, abs=1e-6)
    # the direction: the re-computation in float64 from the definition x / |x|
    ref = x.astype(np.float64) / np.sqrt((x.astype(np.float64) ** 2).sum())
    np.testing.assert_allclose(u, ref, atol=1e-6)


def test_tiny_and_zero_vectors() -> None:
    tiny = np.full((1, 4), 1e-300)  # squares underflow float64; the direction is still there
    np.testing.assert_allclose(unit_rows(tiny), np.full((1, 4), 0.5), atol=1e-7)
    with pytest.raises(UserInputError, match="vector 1 is all zeros"):
        unit_rows(np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_the_embedder_round_trips_and_embeds_as_the_catalogue_does(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    emb = GivenEmbedder(4, {"column": "embedding", "metadata": {"model": "m"}})
    for name, data in emb.to_files().items():
        (tmp_path / name).write_bytes(data)
    assert is_given(tmp_path)
    loaded = GivenEmbedder.load(tmp_path)
    assert loaded == emb and loaded.kind == "given" and loaded.embedding_dim == 4
    catalogue = loaded.embed_videos(x, np.arange(7))
    # an upload of the same float32 values (sent as float64, as JSON numbers are) gets
    # the catalogue's own bits
    for i in range(len(x)):
        assert np.array_equal(loaded.embed(x[i : i + 1].astype(np.float64)), catalogue[i])
    with pytest.raises(UserInputError, match="one vector of 4 values"):
        loaded.embed(x[:2])
    with pytest.raises(UserInputError, match="these videos have frames"):
        loaded.embed_videos(x, np.array([0, 2, 6]))
