"""recsys serve: refusing what it cannot do, and never printing the API key."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.cli import example_requests


def test_example_requests_never_show_the_key() -> None:
    text = example_requests("http://127.0.0.1:8000", "super-secret-key")
    assert "super-secret-key" not in text
    assert '"X-API-Key: $RECSYS_API_KEY"' in text
    assert "X-API-Key" not in example_requests("http://h:1", None)


def test_serve_refuses_several_workers(run_cli, pipeline_out: Path) -> None:
    code, _, err = run_cli("serve", "--artifacts", pipeline_out / "artifact", "--workers", "2")
    assert code == 2 and "one worker per process" in err and "Traceback" not in err


def test_serve_state_url_option(run_cli, pipeline_out: Path) -> None:
    code, _, err = run_cli(
        "serve", "--artifacts", pipeline_out / "artifact", "--state-url", "mysql://x"
    )
    assert code == 2 and "--state-url must start with" in err and "Traceback" not in err
    code, out, _ = run_cli("serve", "--help")
    assert code == 0 and "--state-url" in out


def test_a_bad_setting_is_one_line_and_exit_2(run_cli, pipeline_out: Path, monkeypatch) -> None:
    monkeypatch.setenv("RECSYS_HEAD_TIMEOUT_S", "soon")
    code, _, err = run_cli("serve", "--artifacts", pipeline_out / "artifact")
    assert code == 2 and "Traceback" not in err
    assert "RECSYS_HEAD_TIMEOUT_S" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        # the URL was only checked in the server's start-up: a traceback and exit 3
        ("RECSYS_STATE_URL", "mysql://x", "must start with sqlite:/// or postgresql://"),
        # each of these started a server that refused every k, polled in a loop, or
        # admitted no request
        ("RECSYS_MAX_K", "-1", "greater than or equal to 1"),
        ("RECSYS_SYNC_INTERVAL_S", "0", "greater than 0"),
        ("RECSYS_SNAPSHOT_INTERVAL_S", "-5", "greater than or equal to 0"),
        ("RECSYS_MAX_IN_FLIGHT", "0", "greater than or equal to 1"),
        ("RECSYS_WATCH_THRESHOLD_S", "nan", "finite number"),
    ],
)
def test_a_setting_out_of_its_range_stops_serve_before_it_starts(
    run_cli, pipeline_out: Path, monkeypatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    code, out, err = run_cli("serve", "--artifacts", pipeline_out / "artifact")
    assert code == 2 and "Traceback" not in err, err
    assert err.strip().startswith(f"error: {name}: ") and needle in err
    assert len(err.strip().splitlines()) == 1 and "listening on" not in out
