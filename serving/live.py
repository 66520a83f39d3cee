"""A real ``recsys serve`` process, and a throwaway PostgreSQL server, for whoever drives
the service from outside: the tests and the benchmarks. Nothing in the service imports
it; it needs ``httpx`` (a development dependency)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    artifact: Path,
    db: Path,
    port: int,
    state_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    *,
    api_key: str | None = "k",
    args: Sequence[str] = (),
    single_thread: bool = True,
    ready_timeout_s: float = 60.0,
) -> subprocess.Popen[bytes]:
    """``recsys serve`` on ``port`` with its state in ``db`` (or at ``state_url``), once
    ``/readyz`` answers 200; ``api_key`` None: no write key; ``args``: more flags;
    ``single_thread``: one OpenMP thread (tests beside each other on a small machine).
    RuntimeError with the server's stderr when it dies or is not ready in
    ``ready_timeout_s``."""
    env = {**os.environ, "RECSYS_STATE_DB": str(db)}
    env.pop("RECSYS_API_KEY", None)
    if api_key is not None:
        env["RECSYS_API_KEY"] = api_key
    if single_thread:
        env["OMP_NUM_THREADS"] = "1"
    env.update(extra_env or {})
    if state_url:
        env["RECSYS_STATE_URL"] = state_url
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "serve",
            "--artifacts",
            str(artifact),
            "--port",
            str(port),
            *args,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + ready_timeout_s
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "server died")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


class PostgresServer:
    """A real PostgreSQL server in a temporary directory (Debian's binaries; as the
    ``postgres`` user when running as root, since initdb refuses root)."""

    BINDIRS = (
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    )

    def __init__(self) -> None:
        import shutil
        import tempfile

        bindir = next((Path(d) for d in self.BINDIRS if (Path(d) / "pg_ctl").exists()), None)
        if bindir is None and shutil.which("pg_ctl"):
            bindir = Path(shutil.which("pg_ctl") or "").parent
        if bindir is None:
            raise RuntimeError(
                "these tests need a PostgreSQL server: apt-get install -y postgresql "
                "(initdb and pg_ctl are looked up in /usr/lib/postgresql/*/bin and PATH)"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="recsys-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        import shutil

        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
