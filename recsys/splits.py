"""Time splits: everything trained uses impressions before the test start."""

from __future__ import annotations

from datetime import UTC, datetime

from recsys.errors import UserInputError

#: By default the last quarter of the log's time span is the test period.
DEFAULT_TEST_FRACTION = 0.25


def default_test_start(
    first: datetime, last: datetime, test_fraction: float = DEFAULT_TEST_FRACTION
) -> datetime:
    if not 0 < test_fraction < 1:
        raise ValueError("test_fraction must be in (0, 1)")
    return first + (last - first) * (1 - test_fraction)


def parse_time(text: str) -> datetime:
    """ISO-8601 -> aware UTC datetime (a naive time is taken as UTC)."""
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserInputError(f"not an ISO-8601 time: {text!r}") from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
