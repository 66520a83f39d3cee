"""Co-watch triplet mining (section 3.4.1), as SQL.

The query runs in DuckDB over a relation named ``impressions`` that the caller
provides (a view over ``impressions.parquet``, or a registered Arrow table), so
it is embedded and out-of-core here. The same query, rendered for Spark SQL, runs on a
cluster when the log outgrows one machine (``pipelines/spark/session.py``, docs/scale.md) and
keeps the same triplets.

Definitions (times in microseconds since the epoch, windows inclusive):

* a **valid watch** is an impression with ``watch_seconds >= threshold``;
* a **positive** for an anchor watch (user u, video a, time t) is a different
  video validly watched by u within ``window`` of t;
* a **negative** for that anchor is a different video shown to u within
  ``window`` of t that u did not validly watch within ``window`` of t;
* triplets are (anchor, positive, negative) from the same anchor watch, unique
  per user, at most ``max_per_anchor`` per (user, anchor video) and
  ``max_per_user`` per user, chosen by a seeded hash so a seed reproduces them;
  finally each (anchor, positive, negative) is kept once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from recsys.dataset import DEFAULT_WATCH_THRESHOLD_S

NO_END_US = 2**62  # "no training cut-off"
#: joins the ids hashed for the capped sample: the ASCII unit separator, which ids do not
#: contain, so ("a|b", "c") and ("a", "b|c") never hash alike
HASH_SEPARATOR = "\x1f"

#: The mining query, written once for DuckDB and Spark SQL. ``{p:name}`` is a bound
#: parameter ($name in DuckDB, :name in Spark) and ``{epoch_us}`` the dialect's
#: timestamp-to-microseconds function. Only constructs both engines share: no correlated
#: subquery (the "not validly watched" test is an anti-join written as LEFT JOIN ... IS
#: NULL), and the capped sample is ordered by md5 of the ids and the seed, which both
#: engines compute identically, so they keep the same triplets.
TRIPLETS_SQL_TEMPLATE = """
WITH imp AS (
    SELECT user_id, video_id, {epoch_us}(shown_at) AS t_us,
           watch_seconds >= {p:threshold} AS valid
    FROM impressions
    WHERE {epoch_us}(shown_at) < {p:train_end_us}
),
watch AS (
    SELECT user_id, video_id, t_us FROM imp WHERE valid
),
pos AS (
    SELECT a.user_id, a.video_id AS anchor, a.t_us AS anchor_us, p.video_id AS positive
    FROM watch a
    JOIN watch p
      ON p.user_id = a.user_id
     AND p.video_id <> a.video_id
     AND p.t_us BETWEEN a.t_us - {p:window_us} AND a.t_us + {p:window_us}
),
neg AS (
    SELECT a.user_id, a.video_id AS anchor, a.t_us AS anchor_us, n.video_id AS negative
    FROM watch a
    JOIN imp n
      ON n.user_id = a.user_id
     AND NOT n.valid
     AND n.video_id <> a.video_id
     AND n.t_us BETWEEN a.t_us - {p:window_us} AND a.t_us + {p:window_us}
    LEFT JOIN watch w
      ON w.user_id = a.user_id
     AND w.video_id = n.video_id
     AND w.t_us BETWEEN a.t_us - {p:window_us} AND a.t_us + {p:window_us}
    WHERE w.user_id IS NULL
),
trip AS (
    SELECT DISTINCT p.user_id, p.anchor, p.positive, n.negative
    FROM pos p
    JOIN neg n
      ON n.user_id = p.user_id AND n.anchor = p.anchor AND n.anchor_us = p.anchor_us
    WHERE n.negative <> p.positive
),
ranked AS (
    SELECT user_id, anchor, positive, negative,
           md5(concat_ws({p:sep}, user_id, anchor, positive, negative, {p:seed})) AS h
    FROM trip
),
capped_anchor AS (
    SELECT * FROM (
        SELECT ranked.*, row_number() OVER (
            PARTITION BY user_id, anchor ORDER BY h, positive, negative) AS r_anchor
        FROM ranked
    ) ra WHERE r_anchor <= {p:max_per_anchor}
),
capped_user AS (
    SELECT * FROM (
        SELECT capped_anchor.*, row_number() OVER (
            PARTITION BY user_id ORDER BY h, anchor, positive, negative) AS r_user
        FROM capped_anchor
    ) ru WHERE r_user <= {p:max_per_user}
),
unique_triplets AS (
    SELECT * FROM (
        SELECT capped_user.*, row_number() OVER (
            PARTITION BY anchor, positive, negative ORDER BY h, user_id) AS r_dup
        FROM capped_user
    ) rd WHERE r_dup = 1
)
SELECT anchor, positive, negative, user_id
FROM unique_triplets
ORDER BY anchor, positive, negative
"""

DIALECTS = ("duckdb", "spark")


def render_sql(template: str, dialect: str) -> str:
    """The template in one engine's dialect (see ``TRIPLETS_SQL_TEMPLATE``)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; choose one of {', '.join(DIALECTS)}")
    mark = "$" if dialect == "duckdb" else ":"
    text = re.sub(r"\{p:(\w+)\}", lambda m: mark + m.group(1), template)
    return text.replace("{epoch_us}", "epoch_us" if dialect == "duckdb" else "unix_micros")


TRIPLETS_SQL = render_sql(TRIPLETS_SQL_TEMPLATE, "duckdb")


@dataclass(frozen=True)
class TripletConfig:
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S
    window_s: float = 30 * 60.0
    max_per_anchor: int = 20
    max_per_user: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ValueError("window_s must be >= 0")
        if self.max_per_anchor < 1 or self.max_per_user < 1:
            raise ValueError("max_per_anchor and max_per_user must be >= 1")


def _to_us(t: datetime | None) -> int:
    if t is None:
        return NO_END_US
    if t.tzinfo is None:
        raise ValueError("train_end must be timezone-aware (UTC)")
    return round(t.timestamp() * 1_000_000)


def mine_triplets(
    con: duckdb.DuckDBPyConnection, cfg: TripletConfig, train_end: datetime | None = None
) -> pa.Table:
    """Run the mining query over the caller's ``impressions`` relation.

    Only impressions strictly before ``train_end`` are used. Returns an Arrow table
    (anchor, positive, negative, user_id) sorted by (anchor, positive, negative).
    """
    return con.sql(TRIPLETS_SQL, params=triplet_params(cfg, train_end)).to_arrow_table()


def triplet_params(cfg: TripletConfig, train_end: datetime | None) -> dict[str, Any]:
    """The query's parameters, the same for every engine."""
    return {
        "threshold": float(cfg.watch_threshold_s),
        "window_us": round(cfg.window_s * 1_000_000),
        "train_end_us": _to_us(train_end),
        # Strings: md5 sees the same bytes in both engines.
        "seed": str(int(cfg.seed)),
        "sep": HASH_SEPARATOR,
        "max_per_anchor": int(cfg.max_per_anchor),
        "max_per_user": int(cfg.max_per_user),
    }


def cowatch_pairs_sql() -> str:
    """Co-watched (video_a, video_b) pairs, a < b, for evaluation; same parameters."""
    return """
WITH watch AS (
    SELECT user_id, video_id, epoch_us(shown_at) AS t_us FROM impressions
    WHERE watch_seconds >= $threshold
      AND epoch_us(shown_at) >= $start_us AND epoch_us(shown_at) < $end_us
)
SELECT DISTINCT a.video_id AS video_a, b.video_id AS video_b
FROM watch a JOIN watch b
  ON a.user_id = b.user_id AND a.video_id < b.video_id
 AND b.t_us BETWEEN a.t_us - $window_us AND a.t_us + $window_us
ORDER BY video_a, video_b
"""


def mine_cowatch_pairs(
    con: duckdb.DuckDBPyConnection,
    watch_threshold_s: float = DEFAULT_WATCH_THRESHOLD_S,
    window_s: float = 30 * 60.0,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pa.Table:
    params = {
        "threshold": float(watch_threshold_s),
        "window_us": round(window_s * 1_000_000),
        "start_us": -NO_END_US if start is None else _to_us(start),
        "end_us": _to_us(end),
    }
    return con.sql(cowatch_pairs_sql(), params=params).to_arrow_table()
