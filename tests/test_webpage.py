"""The web page at `/`, driven in headless Chromium (Debian's `chromium` package; Playwright's Python API).

Skipped, with the reason, when no Chromium binary is installed: `apt-get install -y chromium`.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.service_fixtures import (
    INFRARED_CAMERA,
    KEYS,
    crop_bytes,
    ingest_multipart,
    live_server,
    settings_for,
    write_calibration,
)

sync_api = pytest.importorskip("playwright.sync_api")
expect, sync_playwright = sync_api.expect, sync_api.sync_playwright

CHROMIUM = next(
    (
        p
        for p in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium", shutil.which("chromium"))
        if p and os.access(p, os.X_OK)
    ),
    None,
)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install -y chromium)")


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_upload_a_crop_and_see_ranked_cards(tmp_path, embedder, browser):
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path, api_keys=f"{KEYS['admin']}:admin")
    with live_server(create_app(settings, embedder=embedder)) as srv:
        with srv.client(KEYS["admin"]) as c:
            crops = [
                (crop_bytes(pid, cam), {"external_id": f"{cam}/{pid}", "modality": "visible", "camera": cam})
                for pid in (1, 2, 3)
                for cam in (1, 2)
            ]
            assert ingest_multipart(c, crops).status_code == 200
        query = tmp_path / "query.png"
        query.write_bytes(crop_bytes(2, INFRARED_CAMERA))
        visible_query = tmp_path / "visible.png"
        visible_query.write_bytes(crop_bytes(3, 2))

        page = browser.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        outside: list[str] = []
        page.on("request", lambda r: None if r.url.startswith((srv.url, "blob:", "data:")) else outside.append(r.url))
        page.goto(srv.url + "/")
        cards = page.locator("#results .card")
        expect(page.locator("#status")).to_have_text("ready")

        # without the key: the page shows the service's error message
        page.set_input_files("#file", str(query))
        page.click("#search")
        expect(page.locator("#error")).to_contain_text("missing API key")

        page.fill("#apikey", KEYS["admin"])
        page.select_option("#modality", "infrared")
        page.fill("#topk", "4")
        page.click("#search")
        expect(cards).to_have_count(4)
        assert page.is_hidden("#error")
        scores = [float(s) for s in cards.locator(".score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True)
        cameras = cards.locator(".camera").all_inner_texts()
        assert all(text in ("camera: 1", "camera: 2") for text in cameras)
        # thumbnails arrive through authenticated fetches and render
        images = cards.locator("img")
        for _ in range(100):
            widths = images.evaluate_all("imgs => imgs.map(i => (i.complete ? i.naturalWidth : 0))")
            if all(widths):
                break
            page.wait_for_timeout(50)
        assert all(widths) and all(
            src.startswith("blob:") for src in images.evaluate_all("imgs => imgs.map(i => i.src)")
        )
        assert "infrared query" in page.inner_text("#summary")

        # a visible crop searched against both modalities finds itself first
        page.set_input_files("#file", str(visible_query))
        page.select_option("#modality", "visible")
        page.select_option("#target", "any")
        page.fill("#topk", "10")
        page.click("#search")
        expect(cards).to_have_count(6)
        first = cards.first
        assert "id: 2/3" in first.inner_text() and float(first.locator(".score").inner_text()) > 0.999

        # a file that is not an image gets the service's 4xx message
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"not an image")
        page.set_input_files("#file", str(bad))
        page.click("#search")
        expect(page.locator("#error")).to_contain_text("invalid_image")
        expect(cards).to_have_count(0)
        assert not outside, f"the page loaded something from elsewhere: {outside}"
        assert not [e for e in console_errors if "401" not in e and "422" not in e], console_errors
        page.close()


def test_tracklet_query_with_match_marks_filters_and_grouping(tmp_path, embedder, browser):
    from clipmc.service.app import create_app

    threshold = 0.91  # inside the untrained tiny model's similarities on these crops
    calibration = write_calibration(tmp_path / "cal.json", embedder.embedding_version, threshold)
    settings = settings_for(tmp_path, api_keys=f"{KEYS['admin']}:admin", calibration=calibration)
    with live_server(create_app(settings, embedder=embedder)) as srv:
        with srv.client(KEYS["admin"]) as c:
            crops = [
                (
                    crop_bytes(pid, cam, index),
                    {
                        "external_id": f"{cam}/{pid}/{index}",
                        "modality": "visible",
                        "camera": cam,
                        "track_id": f"t{pid}",
                        "timestamp": 1_700_000_000 + 3600 * pid,
                    },
                )
                for pid in (1, 2, 3, 4)
                for cam in (1, 2)
                for index in (0, 1)
            ]
            assert ingest_multipart(c, crops).status_code == 200
        tracklet = []
        for index in range(3):
            path = tmp_path / f"ir{index}.png"
            path.write_bytes(crop_bytes(2, INFRARED_CAMERA, index))
            tracklet.append(str(path))

        page = browser.new_page()
        console_errors: list[str] = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.goto(srv.url + "/")
        expect(page.locator("#status")).to_have_text("ready")
        page.fill("#apikey", KEYS["admin"])
        page.set_input_files("#file", tracklet)
        expect(page.locator("#previews img")).to_have_count(3)
        page.fill("#topk", "16")
        page.click("#search")
        cards = page.locator("#results .card")
        expect(cards).to_have_count(16)
        expect(page.locator("#summary")).to_contain_text("a tracklet of 3 crops")
        expect(page.locator("#calibration")).to_contain_text(f"Match threshold {threshold:.4f}")
        # every card shows its probability; those at or above the threshold are marked as matches
        scores = [float(s) for s in cards.locator(".score").all_inner_texts()]
        marked = [("match" in (cls or "").split()) for cls in cards.evaluate_all("cs => cs.map(c => c.className)")]
        assert marked == [s >= threshold for s in scores] and any(marked) and not all(marked)
        expect(page.locator("#results .card.match .mark").first).to_have_text("✔ match")
        assert cards.locator(".probability").count() == 16

        # one result per track, within a time window and a camera
        page.select_option("#group-by", "track")
        page.fill("#cameras", "2")
        page.fill("#since", "2023-11-14T23:13:20")  # 1_700_000_000 + 3600 s, UTC: persons 1..4
        page.fill("#until", "2023-11-15T01:13:20")  # + 3 h: persons 1..3
        page.click("#search")
        expect(page.locator("#summary")).to_contain_text("one per track")
        expect(cards).to_have_count(3)
        tracks = cards.locator(".meta", has_text="track:").all_inner_texts()
        assert sorted(tracks) == ["track: t1 (2 crops)", "track: t2 (2 crops)", "track: t3 (2 crops)"]
        assert set(cards.locator(".camera").all_inner_texts()) == {"camera: 2"}

        # re-ranking is labelled on the page
        page.select_option("#group-by", "none")
        page.select_option("#rerank", "k-reciprocal")
        page.click("#search")
        expect(page.locator("#summary")).to_contain_text("re-ranked (k-reciprocal")
        assert not console_errors, console_errors
        page.close()
