"""``recsys glmix fit`` and ``recsys glmix score`` end to end on small Parquet tables:
stages with validation AUCs, penalties chosen on validation, integer and string ids,
a list<float> feature, and bad input as one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

CONFIG = """
label = "clicked"

[fixed]
features = ["length_s", "emb"]

[[random]]
name = "per_user"
entity = "user"
features = ["emb"]
l2 = 5.0

[[random]]
name = "per_item"
entity = "item"
features = []

[[random]]
name = "per_country"
entity = "country"
features = ["length_s"]
"""


def _table(seed: int, n: int, int_ids: bool) -> pa.Table:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 80, n), rng.integers(0, 40, n)
    country = rng.integers(0, 5, n)
    emb = rng.normal(size=(n, 3))
    length = rng.gamma(2.0, 300.0, n)  # seconds: far from unit scale
    taste = np.random.default_rng(99).normal(0, 0.8, (80, 3))
    appeal = np.random.default_rng(98).normal(0, 1.0, 40)
    eta = -0.5 + 0.001 * length + (emb * taste[users]).sum(1) + appeal[items] + 0.3 * country
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.int8)
    ids = (lambda a, p: a) if int_ids else (lambda a, p: [f"{p}{v}" for v in a])
    return pa.table(
        {
            "user": ids(users, "u"),
            "item": ids(items, "i"),
            "country": [f"c{c}" for c in country],
            "length_s": length,
            "emb": pa.array(list(emb.astype(np.float32)), pa.list_(pa.float32())),
            "clicked": y,
        }
    )


@pytest.fixture(params=[True, False], ids=["integer_ids", "string_ids"])
def tables(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name, seed, n in (("train", 0, 6000), ("val", 1, 2000), ("test", 2, 500)):
        out[name] = tmp_path / f"{name}.parquet"
        pq.write_table(_table(seed, n, request.param), out[name])
    out["config"] = tmp_path / "model.toml"
    out["config"].write_text(CONFIG)
    return out


def test_fit_reports_each_stage_and_score_writes_the_rows(
    tables: dict[str, Path], tmp_path: Path, run_cli
) -> None:
    model = tmp_path / "m"
    code, out, err = run_cli(
        "glmix",
        "fit",
        "--train",
        tables["train"],
        "--config",
        tables["config"],
        "--out",
        model,
        "--validation",
        tables["val"],
    )
    assert code == 0, err
    report = json.loads((model / "report.json").read_text())
    stages = report["stages"]
    assert [s["stage"] for s in stages] == [
        "fixed effect",
        "+ per_user",
        "+ per_item",
        "+ per_country",
    ]
    aucs = [s["validation_auc"] for s in stages]
    # users' tastes and items' appeal are real: each of those stages adds beyond its interval
    assert aucs[1] > stages[0]["validation_auc_delong_95"][1]
    assert aucs[2] > stages[1]["validation_auc_delong_95"][1]
    assert "validation AUC" in out
    cfg = report["config"]
    assert cfg["l2"] in (0.1, 1.0, 10.0, 100.0)  # omitted: chosen on validation
    assert cfg["random"][0]["l2"] == 5.0  # given: kept
    assert set(stages[1]["l2_validation_log_loss"]) == {"0.1", "1.0", "10.0", "100.0"}
    assert stages[3]["entities"] == {"per_user": 80, "per_item": 40, "per_country": 5}

    scores = tmp_path / "s.parquet"
    code, _, err = run_cli(
        "glmix", "score", "--model", model, "--data", tables["test"], "--out", scores
    )
    assert code == 0, err
    got = pq.read_table(scores)
    test = pq.read_table(tables["test"])
    assert got.column_names == [*test.column_names, "score"]
    assert got.column("user").to_pylist() == test.column("user").to_pylist()
    p = np.asarray(got.column("score"))
    assert ((p > 0) & (p < 1)).all()
    from recsys.metrics import auc

    assert auc(np.asarray(test.column("clicked")), p) > 0.7


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda t: t.set_column(5, "clicked", pa.array([2] * t.num_rows, pa.int8())),
            "clicked: the label must be 0 or 1",
        ),
        (lambda t: t.drop_columns(["item"]), "item: no such column"),
        (
            lambda t: t.set_column(3, "length_s", pa.array([np.nan] * t.num_rows)),
            "length_s: non-finite values",
        ),
        (
            lambda t: t.set_column(3, "length_s", pa.array(["x"] * t.num_rows)),
            "length_s: a feature must be numeric",
        ),
    ],
)
def test_bad_tables_are_one_line_and_exit_2(tmp_path: Path, run_cli, change, needle) -> None:
    train = tmp_path / "t.parquet"
    pq.write_table(change(_table(0, 200, False)), train)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    code, _, err = run_cli(
        "glmix", "fit", "--train", train, "--config", cfg, "--out", tmp_path / "m"
    )
    assert code == 2 and needle in err and "Traceback" not in err, err
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[fixed]\nfeatures = []\n", "label: the 0/1 label column's name is required"),
        ('label = "y"\n[fixed]\nfeatres = []\n', "unknown key 'featres'"),
        ('label = "y"\n[[random]]\nname = "a"\nentity = "u"\nl2 = -1\n', "finite and >= 0"),
        ('label = "y"\n[fixed\n', "not valid TOML"),
    ],
)
def test_bad_configurations_are_one_line_and_exit_2(tmp_path: Path, run_cli, text, needle) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    train = tmp_path / "t.parquet"
    pq.write_table(_table(0, 50, False), train)
    code, _, err = run_cli(
        "glmix", "fit", "--train", train, "--config", cfg, "--out", tmp_path / "m"
    )
    assert code == 2 and needle in err and "Traceback" not in err, err
