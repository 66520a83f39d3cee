"""GLMix over a list of coordinates on Spark: ``recsys.glmix.coordinate_descent``'s loop
over a backend whose rows are a DataFrame, for the table model (``recsys.glmix.table``;
``recsys glmix fit --engine spark``).

Each row carries its label, its fixed design ``x`` and, per coordinate i, its entity
``k{i}``, design ``z{i}``, score ``r{i}`` and (on one row of each entity) the entity's
coefficients ``c{i}``. The fixed effect sums gradient and curvature across partitions;
coordinate i's pass repartitions the rows by ``k{i}`` (every partition then holds whole
entities) and solves each partition with the local per-entity solver. Same loop, same
solver: coefficients equal to the local fit to ~1e-6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pipelines.spark.glmix import SUMS_SCHEMA, add_sums, sums_batch
from pipelines.spark.rows import whole_partitions
from pipelines.spark.session import ROWS_PER_TASK, parallelism
from recsys.errors import UserInputError
from recsys.glmix.coordinate_descent import CoordinateRows
from recsys.glmix.logistic import log_likelihood, logistic_sums
from recsys.glmix.random_effects import fit_entity_effects

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def _flat(column: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)


def _scores(table: pa.Table, shifted: list[tuple[int, float]]) -> np.ndarray:
    """(n,) the scores ``r{i}`` of the coordinates listed, each minus its shift."""
    out = np.zeros(table.num_rows)
    for i, shift in shifted:
        out += table.column(f"r{i}").to_numpy() - shift
    return out


class SparkTableBackend:
    """The rows of a table model as a cached DataFrame (see the module docstring)."""

    def __init__(
        self,
        spark: SparkSession,
        x_fixed: np.ndarray,
        y: np.ndarray,
        coordinates: list[CoordinateRows],
        batch: int,
        rng: np.random.Generator,
        partitions: int | None = None,
    ) -> None:
        if any(c.max_rows for c in coordinates):
            raise UserInputError("--engine spark does not subsample entities' rows (max_rows)")
        self.n = n = len(y)
        self.p = x_fixed.shape[1]
        self.specs = {c.name: (i, c) for i, c in enumerate(coordinates)}
        self.coordinates: tuple[str, ...] = tuple(self.specs)
        self.n_parts = partitions or max(1, min(parallelism(spark), math.ceil(n / ROWS_PER_TASK)))
        #: intercept shifts taken out by ``recenter`` and not yet written into the rows
        self.shift = dict.fromkeys(self.coordinates, 0.0)
        cols: dict[str, Any] = {"y": y, "x": list(np.asarray(x_fixed, np.float32))}
        schema = ["y double", "x array<float>"]
        for i, c in enumerate(coordinates):
            z = c.z.numpy() if c.row_map is None else c.z.numpy()[c.row_map.numpy()]
            cols[f"k{i}"] = c.of_row.astype(np.int64)
            cols[f"z{i}"] = list(np.broadcast_to(z, (n, z.shape[1])).astype(np.float32))
            cols[f"r{i}"] = np.zeros(n)
            cols[f"c{i}"] = [None] * n
            schema += [f"k{i} long", f"z{i} array<float>", f"r{i} double", f"c{i} array<double>"]
        cols["ll"] = np.zeros(n)
        schema.append("ll double")
        self.schema = ", ".join(schema)
        self.columns = [s.split()[0] for s in schema]
        df = spark.createDataFrame(pd.DataFrame(cols), self.schema)
        self.state = df.repartition(self.n_parts).cache()
        self._by: str | None = None

    def fixed_sums(
        self, beta: np.ndarray, derivatives: bool
    ) -> tuple[float, np.ndarray, np.ndarray]:
        p = self.p
        # plain values only: the function travels to the executors (never ``self``)
        shifted = [(i, self.shift[name]) for name, (i, _) in self.specs.items()]

        def part(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            ll, g, h = 0.0, np.zeros(p), np.zeros((p, p))
            for rb in batches:
                if rb.num_rows == 0:
                    continue
                t = pa.Table.from_batches([rb])
                x = _flat(t.column("x"), t.num_rows).astype(np.float32, copy=False)
                y = t.column("y").to_numpy().astype(np.float64)
                off = _scores(t, shifted)
                a, b, c = logistic_sums(x, y, off, np.ones(len(y)), beta, derivatives)
                ll, g, h = ll + a, g + b, h + c
            yield sums_batch(ll, g, h)

        return add_sums(self.state.mapInArrow(part, SUMS_SCHEMA).collect(), p)

    def random_pass(self, coordinate: str, fixed: np.ndarray, steps: int) -> float:
        from pyspark.sql import functions as F

        i, _ = self.specs[coordinate]
        src = self.state
        if self._by != f"k{i}":  # every partition must hold whole entities
            src = src.repartition(self.n_parts, f"k{i}")
        solve = self._pass(coordinate, fixed.copy(), steps, dict(self.shift))
        new = src.mapInArrow(whole_partitions(solve), self.schema).localCheckpoint()
        ll = float(new.agg(F.sum("ll")).collect()[0][0]) / self.n
        self.state.unpersist()
        self.state, self._by = new, f"k{i}"
        self.shift[coordinate] = 0.0  # the pass wrote the shifted coefficients and scores
        return ll

    def _pass(
        self, coordinate: str, beta: np.ndarray, steps: int, shift: dict[str, float]
    ) -> Callable[[pa.Table], pa.Table]:
        i, spec = self.specs[coordinate]
        prior, min_rows, columns = spec.prior, spec.min_rows, self.columns
        shifted = [(j, shift[name]) for name, (j, _) in self.specs.items() if name != coordinate]

        def solve(table: pa.Table) -> pa.Table:
            import torch

            torch.set_num_threads(1)  # one core per Spark task
            n = table.num_rows
            codes, uniq = pd.factorize(table.column(f"k{i}").to_numpy())
            x = _flat(table.column("x"), n).astype(np.float32, copy=False)
            z = np.array(_flat(table.column(f"z{i}"), n), dtype=np.float32)  # writable
            q = z.shape[1]
            coef = np.zeros((len(uniq), q))
            prev = table.column(f"c{i}").combine_chunks()
            if prev.null_count < n:  # warm start from the rows that carry coefficients
                carriers = np.flatnonzero(prev.is_valid().to_numpy(zero_copy_only=False))
                coef[codes[carriers]] = prev.flatten().to_numpy().reshape(len(carriers), q)
                coef[codes[carriers], 0] -= shift[coordinate]
            y = table.column("y").to_numpy().astype(np.float64)
            offset = x.astype(np.float64) @ beta + _scores(table, shifted)
            coef, score = fit_entity_effects(
                codes.astype(np.int64), z, y, offset, coef, prior, min_rows, steps
            )
            _, first = np.unique(codes, return_index=True)
            is_first = np.zeros(n, dtype=bool)
            is_first[first] = True
            carriers = np.flatnonzero(is_first)
            offsets = pa.array(np.concatenate([[0], np.cumsum(is_first * q)]).astype(np.int32))
            out = {c: table.column(c) for c in columns}
            out[f"c{i}"] = pa.ListArray.from_arrays(
                offsets, pa.array(coef[codes[carriers]].ravel()), mask=pa.array(~is_first)
            )
            out[f"r{i}"] = pa.array(score)
            out["ll"] = pa.array(log_likelihood(offset + score, y))
            return pa.table({c: out[c] for c in columns})

        return solve

    def recenter(self, coordinate: str) -> float:
        from pyspark.sql import functions as F

        i, spec = self.specs[coordinate]
        if spec.min_rows > 1:
            return 0.0
        got = self.state.where(F.col(f"c{i}").isNotNull()).agg(F.avg(F.col(f"c{i}")[0])).first()
        if got is None or got[0] is None:
            return 0.0
        m = float(got[0]) - self.shift[coordinate]
        self.shift[coordinate] += m
        return m

    def effects(self, coordinate: str) -> tuple[np.ndarray, None]:
        """((K, q) coefficients by entity code, zeros for an entity without an effect;
        no precision)."""
        from pyspark.sql import functions as F

        i, spec = self.specs[coordinate]
        arrow = self.state.where(F.col(f"c{i}").isNotNull()).select(f"k{i}", f"c{i}").toArrow()
        q = spec.z.shape[1]
        coef = np.zeros((spec.n, q))
        if arrow.num_rows:
            rows = arrow.column(f"k{i}").to_numpy()
            coef[rows] = _flat(arrow.column(f"c{i}"), arrow.num_rows)
            coef[rows, 0] -= self.shift[coordinate]
        return coef, None


def spark_backend(spark: SparkSession, partitions: int | None = None) -> Callable[..., Any]:
    """``recsys.glmix.table.fit_table_glmix``'s ``backend`` on this session."""

    def make(
        x: np.ndarray,
        y: np.ndarray,
        coords: list[CoordinateRows],
        batch: int,
        rng: np.random.Generator,
    ) -> SparkTableBackend:
        return SparkTableBackend(spark, x, y, coords, batch, rng, partitions)

    return make
