"""The explorer page in a real browser (headless Chromium driven by Playwright): the lists
agree with the API, clicking a video shows its similar videos, and a screenshot is saved.

Needs Debian's ``chromium`` (``./run test`` installs it); without it the test fails with
how to install it, never skips. Screenshots: ``test-results/explorer*.png``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.live import free_port, start_server

pytestmark = pytest.mark.xdist_group("browser")
ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-results"

#: the live servers' key (serving.live): user lists and histories need it
KEY = {"X-API-Key": "k"}


def _chromium() -> str:
    for candidate in (
        os.environ.get("CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    raise AssertionError(
        "the explorer test needs Chromium: apt-get install -y chromium (or set CHROMIUM to "
        "a Chromium binary); ./run test installs it"
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def live(artifact: Path, pipeline_out: Path, tmp_path: Path) -> Iterator[str]:
    # The pipeline's report beside the artifact copy, as `recsys pipeline` leaves it.
    for path in [pipeline_out / "report.md", *pipeline_out.glob("*.png")]:
        shutil.copy(path, artifact.parent / path.name)
    port = free_port()
    proc = start_server(artifact, tmp_path / "state.sqlite3", port)
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def _list(page, list_id: str) -> list[str]:
    return page.eval_on_selector_all(
        f"#{list_id} li[data-video-id]", "els => els.map(e => e.dataset.videoId)"
    )


def _user_with_history(base: str) -> str:
    users = httpx.get(f"{base}/v1/users", params={"prefix": "", "limit": 100}, headers=KEY).json()[
        "users"
    ]
    for u in users:
        if httpx.get(f"{base}/v1/users/{u}/history", headers=KEY).json()["history"]:
            return u
    raise AssertionError("no user with a history")


def test_explorer_agrees_with_the_api(browser, live: str) -> None:
    base = live
    # An upload, so the map has a cold-start point.
    d = httpx.get(f"{base}/openapi.json").json()["components"]["schemas"]["FramesIngest"]
    dim = d["properties"]["frames"]["items"]["minItems"]
    frames = np.random.default_rng(0).normal(size=(3, dim)).round(3).tolist()
    r = httpx.post(
        f"{base}/v1/videos",
        json={"video_id": "fresh-upload", "frames": frames},
        headers={"X-API-Key": "k"},
    )
    assert r.status_code == 201
    user = _user_with_history(base)
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(f"{base}/")
    page.click("text=Explorer")
    page.goto(f"{base}/explorer?user={user}#key=k")
    page.wait_for_selector("body[data-ready='true']", timeout=15000)
    render_ms = int(page.get_attribute("body", "data-render-ms"))

    history = httpx.get(f"{base}/v1/users/{user}/history", headers=KEY).json()["history"]
    recs = httpx.get(f"{base}/v1/users/{user}/recommendations", params={"k": 10}).json()
    assert _list(page, "history") == [h["video_id"] for h in history]
    assert _list(page, "recommendations") == [r["video_id"] for r in recs["recommendations"]]
    shown = page.eval_on_selector_all(
        "#recommendations li[data-video-id]",
        "els => els.map(e => [Number(e.dataset.watchProbability), Number(e.dataset.maxSimilarity), Number(e.dataset.avgSimilarity)])",
    )
    want = [
        [r["watch_probability"], r["max_similarity"], r["avg_similarity"]]
        for r in recs["recommendations"]
    ]
    np.testing.assert_allclose(shown, want, rtol=0, atol=1e-12)
    # The map: points drawn, the history and recommendations highlighted, the upload marked.
    assert page.locator("#embedding-map circle.catalogue").count() > 10
    assert page.locator("#embedding-map .recommended").count() == len(recs["recommendations"])
    assert page.locator("#embedding-map [data-video-id='fresh-upload'].cold").count() == 1
    SHOTS.mkdir(exist_ok=True)
    page.screenshot(path=str(SHOTS / "explorer.png"), full_page=True)

    # Keyboard: tab to the first recommendation and press Enter.
    first = recs["recommendations"][0]["video_id"]
    page.focus(f"#recommendations li[data-video-id='{first}'] button")
    page.keyboard.press("Enter")
    page.wait_for_selector("#similar[data-ready='true']", timeout=10000)
    similar = httpx.get(f"{base}/v1/videos/{first}/similar", params={"k": 10}).json()["similar"]
    assert _list(page, "similar") == [s["video_id"] for s in similar]
    sims = page.eval_on_selector_all(
        "#similar li[data-video-id]", "els => els.map(e => Number(e.dataset.similarity))"
    )
    np.testing.assert_allclose(sims, [s["similarity"] for s in similar], rtol=0, atol=1e-12)
    page.screenshot(path=str(SHOTS / "explorer-similar.png"), full_page=True)
    assert render_ms < 5000  # the 1 s goal is measured on a 100k catalogue (below)
    # Labels: every input has one.
    assert page.locator("label[for='user-input']").count() == 1
    page.close()


def test_user_picker_and_report(browser, live: str) -> None:
    # wait_for_function evaluates its text in the page, which the service's CSP forbids (the
    # first test runs the page under the CSP); this context lets the test script in.
    page = browser.new_page(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page.goto(f"{live}/explorer#key=k")
    page.wait_for_selector("body[data-ready='true']")
    users = httpx.get(f"{live}/v1/users", params={"prefix": "u", "limit": 20}, headers=KEY).json()[
        "users"
    ]
    assert users
    page.fill("#user-input", users[0][:2])
    page.wait_for_function(
        "document.querySelectorAll('#user-suggestions option').length > 0", timeout=5000
    )
    page.fill("#user-input", users[0])
    page.press("#user-input", "Enter")
    page.wait_for_selector(f"#status:has-text('{users[0]}')", timeout=10000)
    assert f"user={users[0]}" in page.url
    info = httpx.get(f"{live}/v1/explorer/info").json()
    assert info["report"] and page.is_visible("#report-link")
    page.click("#report-link")
    page.wait_for_selector("main.report h1")
    assert page.locator("main.report table").count() > 0
    # Every plot of the report loads (ROC and the online replay by day).
    srcs = page.locator("main.report img").evaluate_all("els => els.map(e => e.src)")
    assert any(s.endswith("roc.png") for s in srcs) and any(s.endswith("online.png") for s in srcs)
    page.wait_for_function(
        "[...document.querySelectorAll('main.report img')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=10000,
    )
    page.close()


def test_map_and_history_routes_bad_input(live: str) -> None:
    r = httpx.post(f"{live}/v1/map/positions", json={"video_ids": []})
    assert r.status_code == 422
    r = httpx.post(f"{live}/v1/map/positions", json={"video_ids": ["nope"]})
    assert r.status_code == 200 and r.json()["points"] == []
    assert httpx.get(f"{live}/v1/users", params={"limit": 0}, headers=KEY).status_code == 422
    assert httpx.get(f"{live}/explorer/report/files/../../etc/passwd.png").status_code == 404
    body = httpx.get(f"{live}/v1/map").json()
    assert body["projection"] in ("tsne", "pca") and len(body["points"]) <= 4000 + 1
    if body["projection"] == "tsne":
        trust = body["trustworthiness"]
        assert 0 <= trust["pca"] <= 1 and 0 <= trust["tsne"] <= 1
    json.dumps(body)


@pytest.fixture(scope="module")
def big_artifact(pipeline_out: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test artifact with its catalogue grown to 100,000 videos (random unit vectors
    after the real ones, a flat index over all)."""
    from dataclasses import asdict

    from recsys.artifact import embeddings_table, extend_artifact, read_embeddings
    from recsys.index import IndexConfig, VideoIndex

    dst = tmp_path_factory.mktemp("big") / "artifact"
    shutil.copytree(pipeline_out / "artifact", dst)
    ids, emb = read_embeddings(dst / "embeddings.parquet")
    extra = 100_000 - len(ids)
    rng = np.random.default_rng(0)
    more = rng.normal(size=(extra, emb.shape[1])).astype(np.float32)
    more /= np.linalg.norm(more, axis=1, keepdims=True)
    all_ids = list(ids) + [f"x{i:06d}" for i in range(extra)]
    vectors = np.vstack([emb, more])
    index = VideoIndex.build(all_ids, vectors, IndexConfig(kind="flat"))
    import pyarrow.parquet as pq

    extend_artifact(
        dst,
        {
            "embeddings.parquet": lambda p: pq.write_table(embeddings_table(all_ids, vectors), p),
            "index.faiss": index.to_bytes(),
            "index.json": json.dumps(asdict(IndexConfig(kind="flat"))).encode(),
        },
        {},
    )
    return dst


def test_page_renders_in_under_a_second_with_100k_videos(
    browser, big_artifact: Path, tmp_path: Path
) -> None:
    port = free_port()
    proc = start_server(big_artifact, tmp_path / "state.sqlite3", port)
    try:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").json()["videos"] == 100_000
        user = _user_with_history(base)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{base}/explorer?user={user}#key=k")  # warm-up (caches, JIT)
        page.wait_for_selector("body[data-ready='true']", timeout=20000)
        times = []
        for _ in range(3):
            # As a person sees it: from asking for the page to the lists and map drawn.
            t0 = time.perf_counter()
            page.goto(f"{base}/explorer?user={user}#key=k")
            page.wait_for_selector("body[data-ready='true']", timeout=20000)
            times.append(1000 * (time.perf_counter() - t0))
        assert page.locator("#embedding-map circle").count() >= 4000
        SHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SHOTS / "explorer-100k.png"), full_page=True)
        page.close()
        print(f"explorer render with 100k videos: {sorted(times)} ms")
        assert sorted(times)[1] < 1000, times  # the median of three
    finally:
        proc.kill()
        proc.wait()
