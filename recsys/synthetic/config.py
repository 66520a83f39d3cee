"""The synthetic world's knobs (``recsys.synthetic.world`` generates the world)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

FRAME_DTYPES = ("float32", "uint8")

#: the video-appeal settings of the world before per-video effects were modelled: a
#: normal logit term with standard deviation 0.3, nothing of it in the frames
OLD_QUALITY: dict[str, Any] = {"quality_scale": 0.3, "quality_skew": 0.0, "quality_visible": 0.0}


@dataclass(frozen=True)
class SynthConfig:
    seed: int = 0
    num_videos: int = 2000
    num_users: int = 1000
    days: int = 28
    feature_dim: int = 32
    num_topics: int = 16
    components_per_topic: int = 4
    shared_components: int = 3
    #: mean fraction of a video's frames drawn from the shared components (Beta(2, .))
    shared_fraction: float = 0.33
    #: scale of the shared components' means relative to topical ones (large-norm frames)
    shared_scale: float = 3.0
    num_styles: int = 4
    #: how far a style moves a component's frames (per dimension)
    style_scale: float = 0.5
    #: standard deviation of every frame's noise (per dimension)
    frame_noise: float = 0.5
    #: weights of content (which components a video holds: what a bag of words sees) and
    #: of style (how its frames look within a component: what residuals see) in a user's
    #: affinity to a video; each part is standardised first
    content_weight: float = 1.0
    style_weight: float = 1.0
    #: median number of frames per video; counts are log-normal, clipped to [min, max]
    median_frames: float = 16.0
    min_frames: int = 2
    max_frames: int = 300
    #: mean sessions per user and day (each user's own rate is log-normal around it)
    sessions_per_user_day: float = 0.5
    #: mean impressions per session (1 + Poisson)
    impressions_per_session: float = 7.0
    #: fraction of videos that exist before the log starts
    catalogue_at_start: float = 0.4
    #: "float32", or "uint8": the frames halved and quantised with YouTube-8M's map
    #: (``recsys.dataset.dequantize`` reads them back), as that release stores features
    frame_dtype: str = "float32"
    #: each video's appeal, a term of every watch logit: q = scale (e^(s z) - e^(s^2/2)) / s
    #: for a standard normal z (mean 0, a log-normal right tail: a few videos far more
    #: watched than the rest, as real watch rates are); s = ``quality_skew``, and s = 0
    #: gives scale * z. ``OLD_QUALITY`` is the world before (normal, sd 0.3, unseen)
    quality_scale: float = 0.8
    quality_skew: float = 0.5
    #: the share of z's variance that shows in the frames (production quality): that
    #: part moves every topical frame of a video along one direction of frame space
    quality_visible: float = 0.5
    #: how far one standard deviation of the visible part moves the frames
    quality_frame_shift: float = 1.0
    #: a platform's other signals (``recsys.synthetic.world.side_signals``): each video's
    #: length (``length_s`` in videos.parquet; long videos are watched less) and each
    #: user's device (``device`` in users.parquet; TV viewers watch more, desktop less),
    #: moving the watch logit by this much per standard deviation (0: no such columns)
    side_signals: float = 0.0

    def __post_init__(self) -> None:
        for name in ("num_videos", "num_users", "days", "feature_dim", "num_topics"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.components_per_topic < 1 or self.shared_components < 0:
            raise ValueError("components_per_topic must be >= 1 and shared_components >= 0")
        if not 0.0 <= self.shared_fraction < 1.0 or self.shared_scale <= 0:
            raise ValueError("shared_fraction must be in [0, 1) and shared_scale > 0")
        if not 1 <= self.min_frames <= self.max_frames:
            raise ValueError("frame counts need 1 <= min_frames <= max_frames")
        if self.frame_noise < 0 or self.style_scale < 0:
            raise ValueError("frame_noise and style_scale must be >= 0")
        if min(self.content_weight, self.style_weight) < 0 or not (
            self.content_weight + self.style_weight > 0
        ):
            raise ValueError("content_weight and style_weight must be >= 0, not both 0")
        if self.frame_dtype not in FRAME_DTYPES:
            raise ValueError(f"frame_dtype must be one of {', '.join(FRAME_DTYPES)}")
        if self.quality_scale < 0 or self.quality_skew < 0 or self.quality_frame_shift < 0:
            raise ValueError("quality_scale, quality_skew and quality_frame_shift must be >= 0")
        if not (self.side_signals >= 0 and math.isfinite(self.side_signals)):
            raise ValueError("side_signals must be finite and >= 0")
        if not 0.0 <= self.quality_visible <= 1.0:
            raise ValueError("quality_visible must be in [0, 1]")

    @property
    def num_labels(self) -> int:
        return self.num_topics * (1 + self.components_per_topic)
