"""GLMix over a list of coordinates: the block coordinate descent against one dense,
joint Newton solve of the same penalised likelihood (three coordinates, one of them a
third entity), and ids of either type giving the same model."""

from __future__ import annotations

import numpy as np
import pytest

from recsys.glmix.table import RandomEffect, TableGLMixConfig, fit_table_glmix


def _problem(seed: int = 0, n: int = 900):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    users = rng.integers(0, 15, n)
    items = rng.integers(0, 12, n)
    channels = rng.integers(0, 4, n)  # a third entity, crossed with the other two
    zu = rng.normal(size=(n, 1))
    zc = rng.normal(size=(n, 1))
    eta = (
        0.3
        + x @ [0.8, -0.5]
        + rng.normal(0, 0.7, 15)[users]
        + zu[:, 0] * rng.normal(0, 0.5, 15)[users]
    )
    eta += rng.normal(0, 0.5, 12)[items] + rng.normal(0, 0.4, 4)[channels] * (1 + zc[:, 0])
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float64)
    keys = {"user": users, "item": np.array([f"i{i}" for i in items]), "channel": channels}
    z = {"user": zu, "item": np.zeros((n, 0)), "channel": zc}
    return x, y, keys, z


CFG = TableGLMixConfig(
    label="y",
    features=("a", "b"),
    l2=0.5,
    random=(
        RandomEffect("per_user", "user", ("zu",), l2=2.0, intercept_l2=1.0),
        RandomEffect("per_item", "item", (), l2=1.0, intercept_l2=3.0),
        RandomEffect("per_channel", "channel", ("zc",), l2=1.5, intercept_l2=0.7),
    ),
    standardize=False,
    max_passes=400,
    tol=1e-13,
)
NAMES = {"per_user": "user", "per_item": "item", "per_channel": "channel"}


def _dense_solution(x, y, keys, z):
    """Joint Newton over every coefficient at once: the design [1, x | per-entity blocks
    (one-hot times [1, z])], the penalty diagonal, iterated to machine precision."""
    n = len(y)
    blocks, penalty, layout = [np.ones((n, 1)), x], [0.0, CFG.l2, CFG.l2], {}
    col = 3
    for r in CFG.random:
        k = keys[NAMES[r.name]]
        uniq, codes = np.unique(np.asarray(k).astype(str), return_inverse=True)
        zz = np.hstack([np.ones((n, 1)), z[NAMES[r.name]]])
        q = zz.shape[1]
        block = np.zeros((n, len(uniq) * q))
        for j in range(q):
            block[np.arange(n), codes * q + j] = zz[:, j]
        blocks.append(block)
        penalty += ([r.intercept_l2] + [r.l2] * (q - 1)) * len(uniq)
        layout[r.name] = (col, len(uniq), q, list(uniq))
        col += len(uniq) * q
    d = np.hstack(blocks)
    lam = np.array(penalty)
    theta = np.zeros(d.shape[1])
    for _ in range(100):
        mu = 1 / (1 + np.exp(-(d @ theta)))
        g = d.T @ (y - mu) - lam * theta
        h = d.T @ (d * (mu * (1 - mu))[:, None]) + np.diag(lam)
        step = np.linalg.solve(h, g)
        theta += step
        if np.abs(step).max() < 1e-13:
            break
    return theta, layout


def test_coordinate_descent_over_three_coordinates_is_the_joint_newton_solution() -> None:
    x, y, keys, z = _problem()
    model = fit_table_glmix(
        CFG, x, y, {r: keys[e] for r, e in NAMES.items()}, {r: z[e] for r, e in NAMES.items()}
    )
    theta, layout = _dense_solution(x, y, keys, z)
    np.testing.assert_allclose(model.fixed, theta[:3], atol=2e-6)
    for name, (start, k, q, uniq) in layout.items():
        eff = model.effects[name]
        want = theta[start : start + k * q].reshape(k, q)
        got = eff.coef[eff.rows(uniq)]
        np.testing.assert_allclose(got, want, atol=2e-6)


def test_integer_and_string_ids_give_the_same_model_and_scores() -> None:
    x, y, keys, z = _problem(1)
    cfg = TableGLMixConfig(label="y", features=("a", "b"), random=CFG.random[:1] + CFG.random[2:])
    k_int = {"per_user": keys["user"], "per_channel": keys["channel"]}
    k_str = {"per_user": keys["user"].astype(str), "per_channel": [str(c) for c in keys["channel"]]}
    zz = {"per_user": z["user"], "per_channel": z["channel"]}
    a, b = fit_table_glmix(cfg, x, y, k_int, zz), fit_table_glmix(cfg, x, y, k_str, zz)
    np.testing.assert_array_equal(a.fixed, b.fixed)
    np.testing.assert_array_equal(a.predict_proba(x, k_int, zz), b.predict_proba(x, k_str, zz))
    np.testing.assert_array_equal(a.predict_proba(x, k_str, zz), a.predict_proba(x, k_int, zz))


def test_an_unseen_entity_scores_by_the_fixed_effect_alone() -> None:
    x, y, keys, _z = _problem(2)
    cfg = TableGLMixConfig(label="y", features=("a", "b"), random=(RandomEffect("u", "user"),))
    m = fit_table_glmix(cfg, x, y, {"u": keys["user"]}, {"u": np.zeros((len(y), 0))})
    fixed_only = 1 / (1 + np.exp(-(m.fixed_standardizer.design(x[:3]) @ m.fixed)))
    got = m.predict_proba(x[:3], {"u": ["never-seen"] * 3}, {"u": np.zeros((3, 0))})
    np.testing.assert_allclose(got, fixed_only, rtol=1e-6)


def test_standardised_features_leave_the_unpenalised_fit_unchanged() -> None:
    """With no penalty a rescaled, shifted column gives the same probabilities: the
    transform moves into the coefficients (and the model applies it when it scores)."""
    x, y, _keys, _z = _problem(3)
    cfg = TableGLMixConfig(label="y", features=("a", "b"), l2=0.0, tol=1e-12, max_passes=200)
    a = fit_table_glmix(cfg, x, y, {}, {})
    b = fit_table_glmix(replace_std(cfg, False), x, y, {}, {})
    assert not np.allclose(a.fixed, b.fixed)
    np.testing.assert_allclose(a.predict_proba(x, {}, {}), b.predict_proba(x, {}, {}), atol=1e-6)


def replace_std(cfg: TableGLMixConfig, on: bool) -> TableGLMixConfig:
    from dataclasses import replace

    return replace(cfg, standardize=on)


def test_bad_configurations_are_refused() -> None:
    with pytest.raises(ValueError, match="distinct names"):
        TableGLMixConfig(label="y", random=(RandomEffect("a", "u"), RandomEffect("a", "v")))
    with pytest.raises(ValueError, match="finite and >= 0"):
        RandomEffect("a", "u", l2=-1.0)


def test_arrow_ids_factorise_as_python_ids_do() -> None:
    import pyarrow as pa

    from recsys.glmix.table import factorize

    ints = [7, 3, 7, 12, 3]
    for arrow in (pa.array(ints, pa.int64()), pa.chunked_array([ints[:2], ints[2:]])):
        codes, uniq = factorize(arrow)
        want_codes, want_uniq = factorize(np.array([str(i) for i in ints], dtype=object))
        np.testing.assert_array_equal(codes, want_codes)
        assert list(uniq) == list(want_uniq) == ["7", "3", "12"]
