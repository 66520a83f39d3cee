"""A real server under idle, slow and many connections: none of them starves the API."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from serving.connections import raise_open_file_limit
from serving.live import free_port, start_server

IDLE = 1000


def _closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.05)
    try:
        return s.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_and_slow_connections_starve_nothing(artifact: Path, tmp_path: Path) -> None:
    raise_open_file_limit(IDLE + 512)
    port = free_port()
    proc = start_server(
        artifact, tmp_path / "state.sqlite3", port, extra_env={"RECSYS_HEAD_TIMEOUT_S": "1.5"}
    )
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")
        base = f"http://127.0.0.1:{port}"
        t0 = time.perf_counter()
        with httpx.Client(base_url=base, timeout=5) as c:
            assert c.get("/healthz").status_code == 200
            r = c.post("/v1/score", json={"user_id": "u000001", "video_ids": ["v000001"]})
            assert r.status_code == 200
        assert time.perf_counter() - t0 < 1.0
        # A byte every 0.3 s never completes its head: closed at the deadline all the same.
        deadline = time.time() + 6
        while time.time() < deadline and not _closed_by_server(slow):
            slow.sendall(b"X")
            time.sleep(0.3)
        assert _closed_by_server(slow), "a byte-at-a-time client kept its connection"
        assert sum(_closed_by_server(s) for s in idle) == IDLE
        # An idle keep-alive connection after a response times out too.
        keep = socket.create_connection(("127.0.0.1", port))
        keep.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in keep.recv(4096)
        t_resp = time.time()
        while time.time() - t_resp < 8 and not _closed_by_server(keep):
            time.sleep(0.1)
        assert _closed_by_server(keep)
        # Pipelined requests in one write are all answered; then the deadline holds.
        piped = socket.create_connection(("127.0.0.1", port))
        piped.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        got, t_piped = b"", time.time()
        while got.count(b"200 OK") < 3 and time.time() - t_piped < 5:
            got += piped.recv(65536)
        assert got.count(b"200 OK") == 3
        while time.time() - t_piped < 8 and not _closed_by_server(piped):
            time.sleep(0.1)
        assert _closed_by_server(piped)
    finally:
        for s in idle:
            s.close()
        proc.terminate()
        proc.wait(10)
