"""The assembled app: offline docs, the OpenAPI schema, the middleware outermost."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving import queries
from serving.app import create_app
from tests.serving.helpers import catalogue


def test_docs_page_works_offline(client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.text
    assert "/static/swagger-ui/swagger-ui-bundle.js" in html
    assert "cdn." not in html and "https://" not in html.split("<body>")[0]
    js = client.get("/static/swagger-ui/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/static/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_openapi_documents_bodies_and_every_error_status(client) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    rec = paths["/v1/users/{user_id}/recommendations"]["get"]["responses"]
    assert rec["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "RecommendationsResponse"
    )
    sim = paths["/v1/videos/{video_id}/similar"]["get"]["responses"]
    assert sim["200"]["content"]["application/json"]["schema"]["$ref"].endswith("SimilarResponse")
    assert {"400", "401", "409", "413", "422"} <= set(paths["/v1/videos"]["post"]["responses"])
    for path, ops in paths.items():
        for method, op in ops.items():
            for status, resp in op["responses"].items():
                if status.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (path, method, status)
    k_max = next(
        p["schema"]["maximum"]
        for p in paths["/v1/users/{user_id}/recommendations"]["get"]["parameters"]
        if p["name"] == "k"
    )
    assert k_max == client.app.state.settings.max_k  # type: ignore[attr-defined]


def test_an_error_in_a_route_is_the_frameworks_500_counted_with_our_headers(
    settings, artifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The middleware sits outside the framework's error layer: a route's exception is
    still its 500 (the fast route declines it first), now with the security headers,
    and the metrics count it under the route's path."""

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("a bug")

    monkeypatch.setattr(queries, "similar", broken)
    ids, _ = catalogue(artifact)
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get(f"/v1/videos/{ids[0]}/similar")
        assert r.status_code == 500 and r.headers["x-frame-options"] == "DENY"
        assert c.get("/healthz").status_code == 200  # and the app goes on
    counted = app.state.metrics.requests  # type: ignore[attr-defined]
    assert counted[("GET", "/v1/videos/{video_id}/similar", 500)] == 1
