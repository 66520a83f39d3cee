"""User data is private unless configured otherwise; every answer carries the security
headers; a Host outside the allowed list is refused."""

from __future__ import annotations

from fastapi.testclient import TestClient

from serving.app import create_app
from tests.serving.helpers import a_user_with_history

USER_ROUTES = ("/v1/users?prefix=u", "/v1/users/{user}/history")


def _get(c: TestClient, route: str, user: str, key: str | None = None) -> int:
    headers = {"X-API-Key": key} if key else {}
    return c.get(route.format(user=user), headers=headers).status_code


def test_user_data_needs_a_key(settings, artifact) -> None:
    user = a_user_with_history(artifact)
    # The test settings have a write key: it reads too; a read key can be added.
    with TestClient(create_app(settings.model_copy(update={"read_key": "r34d"}))) as c:
        for route in USER_ROUTES:
            assert _get(c, route, user) == 401
            assert _get(c, route, user, "wrong") == 401
            assert _get(c, route, user, "r34d") == 200
            assert _get(c, route, user, "s3cret") == 200
        # What the product serves stays open.
        assert c.get(f"/v1/users/{user}/recommendations?k=3").status_code == 200
    # No key at all: refused, naming the setting, unless made public.
    with TestClient(create_app(settings.model_copy(update={"api_key": None}))) as c:
        r = c.get(f"/v1/users/{user}/history")
        assert r.status_code == 403 and "RECSYS_READ_KEY" in r.json()["detail"]
    open_settings = settings.model_copy(update={"api_key": None, "public_user_data": True})
    with TestClient(create_app(open_settings)) as c:
        assert all(_get(c, route, user) == 200 for route in USER_ROUTES)


def test_security_headers_on_every_answer(client: TestClient) -> None:
    for path in ("/healthz", "/explorer", "/v1/nope", "/v1/users/x/history", "/docs"):
        r = client.get(path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
        assert ("'unsafe-inline'" in csp.split("script-src")[1].split(";")[0]) == (path == "/docs")
    too_big = client.post("/v1/videos", content=b"x" * 3_000_000, headers={"X-API-Key": "s3cret"})
    assert too_big.status_code == 413 and too_big.headers["x-frame-options"] == "DENY"


def test_only_allowed_hosts_are_served(settings) -> None:
    s = settings.model_copy(update={"allowed_hosts": "api.example.com, localhost"})
    with TestClient(create_app(s), base_url="http://api.example.com:8000") as c:
        assert c.get("/v1/explorer/info").status_code == 200
        r = c.get("/v1/explorer/info", headers={"Host": "evil.example"})
        assert r.status_code == 400 and r.json()["detail"] == "Host header not served here"
        assert c.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200
