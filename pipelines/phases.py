"""Seconds per phase of a long job, for its report and its last progress lines.

A job opens a clock (``timing()``); any stage it calls marks its parts with
``with phase("baselines"):``. Phases nest: a phase entered inside another is recorded as
"evaluation / baselines", and a parent's seconds include its children's. Outside a clock
``phase`` records nothing, so a stage run alone (``recsys evaluate``) pays one context
lookup.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

#: what separates a nested phase's name from its parent's
SEPARATOR = " / "


@dataclass
class PhaseClock:
    #: seconds per phase path, in the order the phases were first entered
    seconds: dict[str, float] = field(default_factory=dict)
    _stack: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, float | str]]:
        """[{"phase": path, "seconds": s}] in the order first entered (the report's form)."""
        return [{"phase": p, "seconds": round(s, 3)} for p, s in self.seconds.items()]


_CLOCK: ContextVar[PhaseClock | None] = ContextVar("phase_clock", default=None)


@contextmanager
def timing() -> Iterator[PhaseClock]:
    """A clock for the phases entered inside this block (an enclosing clock is set aside
    and restored afterwards)."""
    clock = PhaseClock()
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the seconds spent in this block to ``name`` (under the enclosing phases) on the
    current clock, if any; a phase entered again adds to its total."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock._stack.append(name)
    path = SEPARATOR.join(clock._stack)
    clock.seconds.setdefault(path, 0.0)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        clock.seconds[path] += time.perf_counter() - t0
        clock._stack.pop()


def phase_lines(rows: list[dict[str, float | str]]) -> list[str]:
    """The phases as indented text lines ("  training  1,090 s"), children under parents."""
    out = []
    for r in rows:
        parts = str(r["phase"]).split(SEPARATOR)
        label = "  " * (len(parts) - 1) + parts[-1]
        out.append(f"{label:<40} {float(r['seconds']):8.1f} s")
    return out


def phase_table(rows: list[dict[str, float | str]]) -> list[str]:
    """The phases as Markdown table lines (phase, seconds, share of the whole job)."""
    tops = sum(float(r["seconds"]) for r in rows if SEPARATOR not in str(r["phase"]))
    lines = ["| phase | seconds | share |", "|---|---|---|"]
    for r in rows:
        s = float(r["seconds"])
        share = f"{100 * s / tops:.0f}%" if tops > 0 else ""
        lines.append(f"| {r['phase']} | {s:.1f} | {share} |")
    return lines
