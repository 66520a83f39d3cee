"""Errors that carry a one-line, user-facing message."""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from a user (file, flag, request). The message is shown as is."""


class DatasetError(UserInputError):
    """A data set violates the contract; ``problems`` lists every violation found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        first = problems[0] if problems else "invalid data set"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)
