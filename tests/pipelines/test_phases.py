"""The phase clock: nested paths, totals of repeated phases, nothing outside a clock."""

from __future__ import annotations

import time

import pytest

from pipelines.phases import phase, phase_lines, phase_table, timing


def test_phases_nest_add_up_and_keep_their_order() -> None:
    with timing() as clock:
        with phase("a"):
            with phase("b"):
                time.sleep(0.01)
            with phase("c"):
                pass
            with phase("b"):  # entered again: its total grows
                time.sleep(0.01)
        with phase("d"):
            pass
    s = clock.seconds
    assert list(s) == ["a", "a / b", "a / c", "d"]
    assert s["a / b"] >= 0.02 and s["a"] >= s["a / b"] + s["a / c"]
    rows = clock.rows()
    assert [r["phase"] for r in rows] == list(s)
    lines = phase_lines(rows)
    assert lines[1].startswith("  b") and lines[0].startswith("a")
    table = phase_table(rows)
    assert table[0] == "| phase | seconds | share |" and len(table) == 2 + len(rows)
    assert table[2].endswith("| 100% |")  # "a" holds nearly all of the top level's time


def test_a_phase_that_raises_is_still_counted_and_unwound() -> None:
    with timing() as clock:
        with pytest.raises(ValueError), phase("failing"):
            raise ValueError("x")
        with phase("after"):
            pass
    assert set(clock.seconds) == {"failing", "after"}  # not "failing / after"


def test_outside_a_clock_nothing_is_recorded() -> None:
    with phase("alone"):  # no clock: runs, records nowhere
        pass
    with timing() as later:
        pass
    assert later.seconds == {}
    with timing() as first:
        with timing() as inner, phase("x"):  # an inner clock sets the outer one aside
            pass
        with phase("y"):
            pass
    assert list(inner.seconds) == ["x"] and list(first.seconds) == ["y"]
