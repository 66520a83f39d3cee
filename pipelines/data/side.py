"""Reading a data set's side features: extra columns of ``videos.parquet`` and of an
optional ``users.parquet`` (``user_id`` plus a column per signal), for GLMix
(``recsys.side_features``). Only the named columns are read: never the frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.dataset import VIDEOS_FILE
from recsys.errors import UserInputError
from recsys.side_features import SideFeatures

USERS_FILE = "users.parquet"
#: columns of videos.parquet that are the contract's, never side features
RESERVED_VIDEO_COLUMNS = ("video_id", "frames", "embedding", "labels")


def _read(path: Path, key: str, columns: Sequence[str]) -> pa.Table:
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as exc:
        raise UserInputError(f"{path}: cannot read ({exc})") from None
    missing = [c for c in (key, *columns) if c not in names]
    if missing:
        have = [n for n in names if n not in RESERVED_VIDEO_COLUMNS and n != key]
        raise UserInputError(
            f"{path.name} has no column {missing[0]!r} (side columns there: "
            f"{', '.join(have) or 'none'})"
        )
    return pq.read_table(path, columns=[key, *columns])


def read_side_features(
    data: Path, video_columns: Sequence[str], user_columns: Sequence[str]
) -> SideFeatures | None:
    """The side features named, from ``data``'s videos.parquet and users.parquet (None
    when none are named)."""
    if not video_columns and not user_columns:
        return None
    reserved = [c for c in video_columns if c in RESERVED_VIDEO_COLUMNS]
    if reserved:
        raise UserInputError(f"video feature {reserved[0]!r} is a column of the data contract")
    videos = _read(data / VIDEOS_FILE, "video_id", video_columns) if video_columns else None
    users = None
    if user_columns:
        path = data / USERS_FILE
        if not path.exists():
            raise UserInputError(f"user features {list(user_columns)} need {path}")
        users = _read(path, "user_id", user_columns)
    return SideFeatures.fit(videos, video_columns, users, user_columns)


def validate_users(path: Path) -> list[str]:
    """Problems of a users.parquet (``recsys validate``): its ``user_id`` (present, no
    nulls, unique) and every other column checked as a side feature would be, a line each."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        return [f"{USERS_FILE}: cannot read ({str(exc).splitlines()[0]})"]
    if "user_id" not in table.column_names:
        return [f"{USERS_FILE}: no user_id column"]
    ids = table.column("user_id")
    if ids.null_count:
        return [f"{USERS_FILE}: user_id has nulls"]
    if pc.count_distinct(ids).as_py() != len(ids):
        return [f"{USERS_FILE}: user_id has repeated ids (one row a user)"]
    problems = []
    for column in (c for c in table.column_names if c != "user_id"):
        try:
            SideFeatures.fit(None, [], table.select(["user_id", column]), [column])
        except UserInputError as exc:
            problems.append(f"{USERS_FILE}: {exc}")
    return problems
