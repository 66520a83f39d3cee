"""recsys serve: refusing what it cannot do, and never printing the API key."""

from __future__ import annotations

from pathlib import Path

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
