"""The assembled app: offline docs, the OpenAPI schema."""

from __future__ import annotations


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
