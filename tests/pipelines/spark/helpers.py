"""What the Spark tests share: a spy on the rows each action brings to the driver."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipelines.spark.session import spark_session


@pytest.fixture(scope="module", name="spark")
def spark_fixture() -> Iterator[Any]:
    """One local[2] session for a test module (tests that use it share an xdist group)."""
    session = spark_session("local[2]")
    yield session
    session.stop()


class RowsToDriver:
    """Counts the rows each action brings to the driver (collect, toArrow, toPandas, ...)."""

    def __init__(self, spark: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.largest = 0
        cls = type(spark.range(1))
        for name in ("collect", "toArrow", "toPandas", "take", "tail", "head"):
            real = getattr(cls, name)
            monkeypatch.setattr(cls, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        def counted(df: Any, *args: Any, **kwargs: Any) -> Any:
            got = real(df, *args, **kwargs)
            n = getattr(got, "num_rows", None)
            n = len(got) if n is None and hasattr(got, "__len__") else (n or 0)
            self.largest = max(self.largest, int(n))
            return got

        return counted
