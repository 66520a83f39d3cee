"""Which coordinates the GLMix job ships, and the variant it keeps beside them."""

from __future__ import annotations

from pipelines.glmix.coordinates import choose_coordinates
from recsys.glmix.model import GLMixConfig
from recsys.glmix.tuning import NO_VIDEO_EFFECTS


def _never(base: GLMixConfig):
    raise AssertionError("validation was not asked for")


def test_untuned_or_switched_off_needs_no_validation() -> None:
    base = GLMixConfig(random_l2=3.0)
    shipped, variant, info = choose_coordinates(base, True, False, print, _never)
    assert shipped.video_effects and not variant.video_effects and info == {}
    assert shipped.random_l2 == variant.random_l2 == 3.0
    shipped, variant, _ = choose_coordinates(base, False, True, print, _never)
    assert not shipped.video_effects and variant.video_effects


def test_the_validation_choice_is_shipped_and_the_best_other_kept() -> None:
    losses = {NO_VIDEO_EFFECTS: 0.50, "1.0": 0.49, "3.0": 0.48, "10.0": 0.485}
    picked = GLMixConfig(video_effects=True, video_intercept_l2=3.0)
    shipped, variant, info = choose_coordinates(
        GLMixConfig(), True, True, lambda m: None, lambda b: (picked, losses)
    )
    assert shipped == picked and not variant.video_effects
    assert info["video_effects"] == "L2 3" and info["video_validation_log_loss"] == losses
    # "none" wins: ship without, keep the best penalty as the variant for the report.
    losses = {NO_VIDEO_EFFECTS: 0.40, "1.0": 0.49, "3.0": 0.48, "10.0": 0.45}
    shipped, variant, info = choose_coordinates(
        GLMixConfig(), True, True, lambda m: None, lambda b: (GLMixConfig(), losses)
    )
    assert not shipped.video_effects and info["video_effects"] == NO_VIDEO_EFFECTS
    assert variant.video_effects and variant.video_intercept_l2 == 10.0


def test_the_four_models_and_slopes_only_where_there_are_global_features() -> None:
    from dataclasses import replace

    from pipelines.glmix.coordinates import fit_four
    from recsys import artifact as art

    seen: dict[str, tuple[GLMixConfig, bool]] = {}

    def fit(cfg: GLMixConfig, features: bool) -> str:
        seen[f"{cfg.use_video_features}-{cfg.video_effects}"] = (cfg, features)
        return f"model {len(seen)}"

    shipped = GLMixConfig(video_effects=True, video_slopes=True)
    out = fit_four(shipped, replace(shipped, video_effects=False), fit, print)  # type: ignore[arg-type]
    assert list(out) == [
        art.GLMIX,
        art.GLMIX_NO_VIDEO,
        art.GLMIX_VARIANT,
        art.GLMIX_NO_VIDEO_VARIANT,
    ]
    assert seen["True-True"][0].video_slopes and seen["True-True"][1]
    assert not seen["False-True"][0].video_slopes and not seen["False-True"][1]
    assert not seen["False-False"][0].video_slopes
