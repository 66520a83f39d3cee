"""docker-compose.yml cannot run here (no Docker engine); check what it runs instead."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compose() -> str:
    return (ROOT / "docker-compose.yml").read_text()


def test_compose_commands_are_real_recsys_subcommands(run_cli) -> None:
    text = _compose()
    used = set(re.findall(r"recsys[ \t]+([a-z0-9-]+)", text)) | set(
        re.findall(r'"recsys",\s*"([a-z][a-z0-9-]*)"', text)
    )
    assert {"synth", "validate", "pipeline", "serve"} <= used
    for sub in used:
        code, out, _ = run_cli(sub, "--help")
        assert code == 0 and "Usage" in out, sub


def test_compose_options_exist(run_cli) -> None:
    text = _compose()
    pipeline_cmd = re.search(r"recsys pipeline ([^\n&]+)", text)
    assert pipeline_cmd is not None
    _, help_text, _ = run_cli("pipeline", "--help")
    for tok in shlex.split(pipeline_cmd.group(1)):
        if tok.startswith("--"):
            assert tok in help_text, tok
    _, serve_help, _ = run_cli("serve", "--help")
    for opt in ("--artifacts", "--host", "--port", "--max-in-flight"):
        assert opt in serve_help and opt in text


def test_healthcheck_and_settings() -> None:
    text = _compose()
    assert "/readyz" in text and "RECSYS_API_KEY" in text and "RECSYS_STATE_URL" in text
    from serving.settings import Settings

    assert {"api_key", "state_db", "state_url", "artifacts"} <= set(Settings.model_fields)
    import yaml

    services = yaml.safe_load(text)["services"]
    replicas = [s for s in services.values() if "serve" in (s.get("command") or [])]
    assert len(replicas) == 2 and "postgres" in services
    urls = {s["environment"]["RECSYS_STATE_URL"] for s in replicas}
    assert len(urls) == 1 and next(iter(urls)).startswith("postgresql://")
    assert {s["ports"][0] for s in replicas} == {"8000:8000", "8001:8000"}
    docker = (ROOT / "Dockerfile").read_text()
    assert "requirements.lock" in docker and "pip install" in docker
