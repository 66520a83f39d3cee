"""Which GLMix coordinates the job fits: the per-video coordinate chosen on validation,
and the four models the artifact keeps (video features or not, per-video effects or not)
for the report's Table 7 with and without them. Shared by both engines' jobs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from recsys import artifact as art
from recsys.glmix.model import GLMix, GLMixConfig
from recsys.glmix.tuning import NO_VIDEO_EFFECTS


def choose_coordinates(
    base: GLMixConfig,
    video_effects: bool,
    tune: bool,
    say: Callable[[str], None],
    select_video: Callable[[GLMixConfig], tuple[GLMixConfig, dict[str, float]]],
) -> tuple[GLMixConfig, GLMixConfig, dict[str, Any]]:
    """(the shipped config, its variant with the per-video coordinate the other way, what
    the validation said). ``select_video(base)`` -> (config, losses) is the engine's
    ``select_video_l2``; it runs only when asked to ``tune`` with ``video_effects``."""
    with_videos = replace(base, video_effects=True)
    if not video_effects:
        return replace(base, video_effects=False), with_videos, {}
    if not tune:
        return with_videos, replace(base, video_effects=False), {}
    say("GLMix: choosing the per-video effects' penalty (or none) on the validation rows ...")
    chosen, losses = select_video(base)
    say(f"GLMix: per-video effects {_describe(chosen)}")
    if chosen.video_effects:
        variant = replace(chosen, video_effects=False)
    else:
        best = min((k for k in losses if k != NO_VIDEO_EFFECTS), key=lambda k: losses[k])
        variant = replace(chosen, video_effects=True, video_intercept_l2=float(best))
    info = {"video_effects": _describe(chosen), "video_validation_log_loss": losses}
    return chosen, variant, info


def _describe(c: GLMixConfig) -> str:
    return f"L2 {c.video_intercept_l2:g}" if c.video_effects else NO_VIDEO_EFFECTS


#: fit(config, with global features?) -> model, on the engine's rows
_Fit = Callable[[GLMixConfig, bool], GLMix]


def fit_four(
    shipped: GLMixConfig, variant: GLMixConfig, fit: _Fit, say: Callable[[str], None]
) -> dict[str, GLMix]:
    """The shipped pair (with and without video features) and the variant pair (the
    per-video coordinate the other way), by artifact stem."""
    out = {}
    for stem, cfg, features in (
        (art.GLMIX, shipped, True),
        (art.GLMIX_NO_VIDEO, shipped, False),
        (art.GLMIX_VARIANT, variant, True),
        (art.GLMIX_NO_VIDEO_VARIANT, variant, False),
    ):
        if stem != art.GLMIX:
            say(f"GLMix: {stem} ...")
        # The model without video features has no global features: no per-video slopes.
        slopes = cfg.video_slopes and features
        out[stem] = fit(replace(cfg, use_video_features=features, video_slopes=slopes), features)
    return out
