"""A classification data set whose frames are real images: scikit-learn's bundled 8x8 digits.

Each "video" is a set of 2..``max_frames`` scans drawn from one to three digit classes;
its labels are the digits that appear. The 1,797 scans ship inside scikit-learn (no
download). Useful as a small real-frame check that a learned pooling at least matches
a bag of words (docs/results.md). Returns a pyarrow table; never touches files.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from recsys.dataset import frames_to_arrow


def digits_videos(num_videos: int = 1500, max_frames: int = 40, seed: int = 0) -> pa.Table:
    """videos.parquet table: video_id, frames (D = 64, values in [0, 1]), labels, split."""
    from sklearn.datasets import load_digits

    if num_videos < 1 or max_frames < 2:
        raise ValueError("num_videos must be >= 1 and max_frames >= 2")
    data = load_digits()
    images = (data.data / 16.0).astype(np.float32)
    by_class = [np.flatnonzero(data.target == k) for k in range(10)]
    rng = np.random.default_rng(seed)
    frames, lengths, labels = [], [], []
    for _ in range(num_videos):
        digits = rng.choice(10, size=int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2])), replace=False)
        t = int(rng.integers(2, max_frames + 1))
        which = digits[rng.integers(0, len(digits), t)]
        frames.append(images[[rng.choice(by_class[d]) for d in which]])
        lengths.append(t)
        labels.append(sorted(int(d) for d in digits))
    split = rng.choice(np.array(["train", "validation", "test"]), num_videos, p=[0.7, 0.15, 0.15])
    return pa.table(
        {
            "video_id": pa.array([f"d{i:05d}" for i in range(num_videos)], pa.string()),
            "frames": frames_to_arrow(np.concatenate(frames), np.array(lengths)),
            "labels": pa.array(labels, pa.list_(pa.int32())),
            "split": pa.array(split, pa.string()),
        }
    )
