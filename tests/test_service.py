"""The service end to end: a real uvicorn server on a loopback port, the tiny model, synthetic crops."""

from __future__ import annotations

import base64
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipmc.service.schemas import MAX_TRACKLET_CROPS
from tests.service_fixtures import (
    API_KEYS,
    INFRARED_CAMERA,
    KEYS,
    VISIBLE_CAMERAS,
    GatedEmbedder,
    crop_array,
    crop_bytes,
    encode,
    ingest_multipart,
    live_server,
    png_with_header,
    query_multipart,
    settings_for,
    truncated_jpeg,
)

RESULT_KEYS = {"id", "external_id", "score", "modality", "camera", "timestamp", "track_id", "identity", "metadata"}
MAX_FILES = 8
MAX_REQUEST_BYTES = 2 * 1024 * 1024
T0 = 1_700_000_000.0  # timestamps of the ingested crops: T0 + pid * 60


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    from clipmc.service.app import create_app

    settings = settings_for(
        tmp_path_factory.mktemp("svc"),
        api_keys=API_KEYS,
        max_files=MAX_FILES,
        max_request_bytes=MAX_REQUEST_BYTES,
        max_image_bytes=1024 * 1024,
    )
    with live_server(create_app(settings, embedder=embedder)) as srv:
        with srv.client(KEYS["ingest"]) as c:
            visible = [
                (
                    crop_bytes(pid, cam),
                    {
                        "external_id": f"vis/{cam}/{pid}.png",
                        "modality": "visible",
                        "camera": cam,
                        "timestamp": T0 + pid * 60,
                        "identity": f"p{pid}",
                        "metadata": {"pid": pid},
                    },
                )
                for pid in range(1, 7)
                for cam in VISIBLE_CAMERAS
            ]
            for start in range(0, len(visible), MAX_FILES):
                r = ingest_multipart(c, visible[start : start + MAX_FILES])
                assert r.status_code == 200, r.text
            body = {
                "items": [
                    {
                        "external_id": f"ir/{pid}.png",
                        "modality": "infrared",
                        "camera": INFRARED_CAMERA,
                        "timestamp": T0 + pid * 60,
                        "image_base64": base64.b64encode(crop_bytes(pid, INFRARED_CAMERA)).decode(),
                    }
                    for pid in range(1, 4)
                ]
            }
            r = c.post("/gallery/ingest", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["created"] == 3
        yield srv


@pytest.fixture()
def admin(server):
    with server.client(KEYS["admin"]) as c:
        yield c


def assert_healthy(server) -> None:
    with server.client() as c:
        r = c.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return body["error"]


# -- the happy path ---------------------------------------------------------------------------------


def test_health_ready_and_docs(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert ready.json()["embedder"]["batch_sizes"] == [1, 8]
        spec = c.get("/openapi.json").json()
        assert {"/query", "/gallery/ingest", "/gallery/items/{item_id}", "/gallery/stats"} <= set(spec["paths"])
        content = spec["paths"]["/query"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json"} <= set(content)
        assert "QueryJSON" in spec["components"]["schemas"] and "IngestItemJSON" in spec["components"]["schemas"]
        docs = c.get("/docs")
        assert docs.status_code == 200 and "cdn." not in docs.text  # no CDN: works offline
        asset = next(line.split('"')[1] for line in docs.text.splitlines() if "swagger-ui-bundle.js" in line)
        assert c.get(asset).status_code == 200


def test_infrared_query_returns_ranked_visible_items(server, admin):
    r = query_multipart(admin, crop_bytes(2, INFRARED_CAMERA, index=1), modality="infrared", top_k=5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"query_modality", "results", "took_ms"}
    assert body["query_modality"] == "infrared" and body["took_ms"] > 0
    results = body["results"]
    assert len(results) == 5
    for hit in results:
        assert set(hit) == RESULT_KEYS
        assert hit["modality"] == "visible"  # target_modality defaults to the opposite one
        assert hit["camera"] in {str(c) for c in VISIBLE_CAMERAS}
        assert isinstance(hit["id"], int) and -1.0001 <= hit["score"] <= 1.0001
        assert hit["identity"].startswith("p") and hit["metadata"]["pid"] >= 1
    scores = [hit["score"] for hit in results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("target", ["any", "visible"])
def test_gallery_crop_queried_with_itself_comes_first(server, admin, target):
    r = query_multipart(admin, crop_bytes(4, 2), modality="visible", target_modality=target, top_k=3)
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["external_id"] == "vis/2/4.png" and top["score"] > 0.999


def test_json_query_with_filters_and_iso_times(server, admin):
    payload = {
        "image_base64": base64.b64encode(crop_bytes(1, 1)).decode(),
        "modality": "visible",
        "target_modality": "any",
        "top_k": 50,
        "cameras": ["1", 3],
        "since": "2023-11-14T22:15:20Z",  # T0 + 2 min
        "until": T0 + 5 * 60,
    }
    r = admin.post("/query", json=payload)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results
    assert {hit["camera"] for hit in results} <= {"1", "3"}
    assert all(T0 + 120 <= hit["timestamp"] <= T0 + 300 for hit in results)
    # in the window [T0 + 2 min, T0 + 5 min]: pids 2..5 on visible camera 1, pids 2..3 on infrared camera 3
    assert len(results) == 4 + 2
    r = query_multipart(admin, crop_bytes(1, 1), modality="visible", target_modality="any", exclude_cameras="1,3")
    assert {hit["camera"] for hit in r.json()["results"]} == {"2"}


def test_visible_query_searches_infrared_by_default(server, admin):
    r = query_multipart(admin, crop_bytes(1, 1), modality="visible", top_k=10)
    results = r.json()["results"]
    assert len(results) == 3 and {hit["modality"] for hit in results} == {"infrared"}


def test_ingest_is_idempotent_and_items_can_be_read_and_deleted(server, admin):
    crops = [
        (crop_bytes(20 + i, 1), {"external_id": f"idem/{i}", "modality": "visible", "camera": 7}) for i in range(3)
    ]
    first = ingest_multipart(admin, crops)
    assert first.status_code == 200, first.text
    assert first.json()["created"] == 3 and first.json()["existing"] == 0
    again = ingest_multipart(admin, crops)
    assert again.json() == {"ids": first.json()["ids"], "created": 0, "existing": 3}

    item_id = first.json()["ids"][1]
    item = admin.get(f"/gallery/items/{item_id}").json()
    assert item["external_id"] == "idem/1" and item["camera"] == "7" and item["modality"] == "visible"
    assert set(item) == RESULT_KEYS - {"score"} and item["id"] == item_id
    thumb = admin.get(f"/gallery/items/{item_id}/thumbnail")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content[:2] == b"\xff\xd8"

    count = admin.get("/gallery/stats").json()["count"]
    assert admin.delete(f"/gallery/items/{item_id}").json() == {"id": item_id, "deleted": True}
    assert_error(admin.get(f"/gallery/items/{item_id}"), 404, "not_found")
    assert_error(admin.get(f"/gallery/items/{item_id}/thumbnail"), 404, "not_found")
    assert_error(admin.delete(f"/gallery/items/{item_id}"), 404, "not_found")
    assert admin.get("/gallery/stats").json()["count"] == count - 1


def test_ingest_is_all_or_nothing(server, admin):
    before = admin.get("/gallery/stats").json()["count"]
    good = [(crop_bytes(30 + i, 2), {"external_id": f"aon/{i}", "modality": "visible"}) for i in range(2)]
    bad = (truncated_jpeg(), {"external_id": "aon/bad", "modality": "visible"})
    err = assert_error(ingest_multipart(admin, [good[0], bad, good[1]]), 422, "invalid_image")
    assert "images[1]" in err["message"]
    assert admin.get("/gallery/stats").json()["count"] == before
    # metadata the gallery refuses (over 64 KB) also stores nothing
    huge = (crop_bytes(33, 2), {"external_id": "aon/huge", "modality": "visible", "metadata": {"x": "a" * 70000}})
    assert_error(ingest_multipart(admin, [good[0], huge]), 422)
    assert admin.get("/gallery/stats").json()["count"] == before
    # the good crops were never stored: ingesting them now creates them
    r = ingest_multipart(admin, good)
    assert r.json()["created"] == 2 and r.json()["existing"] == 0


def test_stats(server, admin):
    stats = admin.get("/gallery/stats").json()
    assert stats["count"] >= 15 and stats["dim"] == 80
    assert stats["embedding_version"] == stats["model"]["embedding_version"]
    assert stats["batching"]["max_batch"] == 8


# -- auth -------------------------------------------------------------------------------------------


def test_auth_missing_invalid_and_wrong_scope(server):
    image = crop_bytes(1, INFRARED_CAMERA)
    with server.client() as anonymous:
        r = query_multipart(anonymous, image)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(anonymous.get("/gallery/stats"), 401)
        assert_error(anonymous.get("/gallery/items/1"), 401)
        assert_error(anonymous.get("/gallery/items/1/thumbnail"), 401)
        r = anonymous.get("/gallery/stats", headers={"Authorization": f"Basic {KEYS['admin']}"})
        assert_error(r, 401)
        for open_path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js"):
            assert anonymous.get(open_path).status_code == 200, open_path
    with server.client("not-a-key-at-all") as wrong:
        r = query_multipart(wrong, image)
        assert_error(r, 401, "unauthorized")
        assert "invalid_token" in r.headers["www-authenticate"]
    with server.client(KEYS["query"]) as query_only:
        assert query_multipart(query_only, image).status_code == 200
        assert query_only.get("/gallery/stats").status_code == 200
        r = ingest_multipart(query_only, [(image, {"modality": "infrared"})])
        assert_error(r, 403, "forbidden")
        assert_error(query_only.delete("/gallery/items/1"), 403, "forbidden")
    with server.client(KEYS["ingest"]) as ingest:
        assert query_multipart(ingest, image).status_code == 200  # this key also has the query scope
    assert_healthy(server)


# -- bad input: always a 4xx JSON error, and the server stays healthy ------------------------------


def _gif() -> bytes:
    return encode(crop_array(1, 1), "GIF")


QUERY_CASES = [
    ("not an image", {"image": b"this is not an image"}, {}, 422, "invalid_image"),
    ("truncated image", {"image": truncated_jpeg()}, {}, 422, "invalid_image"),
    ("zero bytes", {"image": b""}, {}, 422, "empty_image"),
    ("decompression bomb", {"image": png_with_header(100_000, 100_000)}, {}, 413, "image_too_large"),
    ("bomb under Pillow's limit", {"image": png_with_header(8000, 8000)}, {}, 413, "image_too_large"),
    ("huge dimension", {"image": png_with_header(20_000, 10)}, {}, 413, "image_too_large"),
    ("image bytes over the limit", {"image": b"\x89PNG" + b"\0" * (1024 * 1024 + 1)}, {}, 413, "image_too_large"),
    ("gif not accepted", {"image": "gif"}, {}, 415, "unsupported_image_format"),
    ("wrong modality", {}, {"modality": "daylight"}, 422, "validation_error"),
    ("wrong target", {}, {"target_modality": "both"}, 422, "validation_error"),
    ("top_k zero", {}, {"top_k": "0"}, 422, "validation_error"),
    ("top_k too large", {}, {"top_k": "1001"}, 422, "validation_error"),
    ("top_k not a number", {}, {"top_k": "ten"}, 422, "validation_error"),
    ("bad time", {}, {"since": "yesterday"}, 422, "validation_error"),
    ("since after until", {}, {"since": "2024-01-02", "until": "2024-01-01"}, 422, "validation_error"),
    ("unknown field", {}, {"colour": "red"}, 422, "validation_error"),
    ("no image", {"image": None}, {}, 422, "missing_image"),
]


@pytest.mark.parametrize(("name", "files", "fields", "status", "code"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
def test_bad_query_input(server, admin, name, files, fields, status, code):
    image = files.get("image", crop_bytes(1, INFRARED_CAMERA))
    if image == "gif":
        image = _gif()
    upload = {"other": ("x", b"x")} if image is None else {"image": ("q", image, "application/octet-stream")}
    r = admin.post("/query", files=upload, data={"modality": "infrared", **fields})
    assert_error(r, status, code)
    assert_healthy(server)


def test_bad_request_shapes(server, admin):
    image = crop_bytes(1, INFRARED_CAMERA)
    b64 = base64.b64encode(image).decode()
    cases = [
        (admin.post("/query", content=b"image", headers={"content-type": "text/plain"}), 415, "unsupported_media_type"),
        (admin.post("/query", content=b"{nope", headers={"content-type": "application/json"}), 422, "invalid_json"),
        (admin.post("/query", json={"image_base64": "@@not base64@@"}), 422, "invalid_image"),
        (admin.post("/query", json={"modality": "infrared"}), 422, "validation_error"),
        (admin.post("/query", json=["a list"]), 422, "validation_error"),
        (  # several image parts are a tracklet, up to MAX_TRACKLET_CROPS of them
            admin.post("/query", files=[("image", (f"{i}", image)) for i in range(MAX_TRACKLET_CROPS + 1)]),
            413,
            "too_many_files",
        ),
        (admin.post("/query", json={"images_base64": [b64] * (MAX_TRACKLET_CROPS + 1)}), 413, "too_many_files"),
        (admin.post("/query", json={"image_base64": b64, "images_base64": [b64]}), 422, "validation_error"),
        (admin.post("/query", json={"images_base64": []}), 422, "validation_error"),
        (admin.post("/query", json={"image_base64": b64, "rerank": "magic"}), 422, "validation_error"),
        (admin.post("/query", json={"image_base64": b64, "group_by": "camera"}), 422, "validation_error"),
        (admin.get("/gallery/items/not-a-number"), 422, "validation_error"),
        (admin.get("/gallery/items/987654321"), 404, "not_found"),
        # ids past int64 would overflow SQLite: refused by the route, not a 500
        (admin.get(f"/gallery/items/{2**63}"), 422, "validation_error"),
        (admin.get("/gallery/items/99999999999999999999999/thumbnail"), 422, "validation_error"),
        (admin.delete(f"/gallery/items/{2**63}"), 422, "validation_error"),
        (admin.delete("/gallery/items/0"), 422, "validation_error"),
        (admin.get("/no/such/route"), 404, "not_found"),
        (admin.put("/query"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert_healthy(server)


def test_bad_ingest_input(server, admin):
    image = crop_bytes(40, 1)
    meta = {"modality": "visible", "camera": 1}
    too_many = [(image, {**meta, "external_id": f"many/{i}"}) for i in range(MAX_FILES + 1)]
    assert_error(ingest_multipart(admin, too_many), 413, "too_many_files")
    json_too_many = {"items": [{**meta, "image_base64": base64.b64encode(image).decode()}] * (MAX_FILES + 1)}
    assert_error(admin.post("/gallery/ingest", json=json_too_many), 413, "too_many_files")
    files = [("images", ("a.png", image)), ("images", ("b.png", image))]
    r = admin.post("/gallery/ingest", files=files, data={"items": json.dumps([meta])})
    assert_error(r, 422, "invalid_request")  # 2 images, 1 item
    r = admin.post("/gallery/ingest", files=files[:1], data={"items": "[{not json"})
    assert_error(r, 422, "invalid_json")
    r = admin.post("/gallery/ingest", files=files[:1], data={"items": json.dumps([{"camera": 1}])})
    assert "modality" in assert_error(r, 422, "validation_error")["message"]
    r = admin.post("/gallery/ingest", files=files[:1], data={"items": json.dumps([{"modality": "uv"}])})
    assert_error(r, 422, "validation_error")
    r = admin.post("/gallery/ingest", files=files[:1])
    assert_error(r, 422, "invalid_request")
    assert_error(admin.post("/gallery/ingest", json={"items": []}), 422, "validation_error")
    r = admin.post("/gallery/ingest", json={"items": [{**meta, "image_base64": ""}]})
    assert_error(r, 422, "empty_image")
    good_b64 = {**meta, "image_base64": base64.b64encode(image).decode()}
    r = admin.post("/gallery/ingest", json={"items": [good_b64, {**meta, "image_base64": "@@"}]})
    assert "items[1].image_base64" in assert_error(r, 422, "invalid_image")["message"]
    r = admin.post("/gallery/ingest", content=b'{"items": [', headers={"content-type": "application/json"})
    assert_error(r, 422, "invalid_json")
    assert_healthy(server)


def test_oversized_bodies(server, admin):
    big = b"\0" * (MAX_REQUEST_BYTES + 1)
    r = admin.post("/query", files={"image": ("q", big)})
    assert_error(r, 413, "payload_too_large")
    assert_healthy(server)

    def chunks():  # no Content-Length: counted while it streams
        for _ in range(MAX_REQUEST_BYTES // 65536 + 2):
            yield b"x" * 65536

    r = admin.post("/gallery/ingest", content=chunks(), headers={"content-type": "application/json"})
    assert_error(r, 413, "payload_too_large")
    assert_healthy(server)


# -- metrics and batching ---------------------------------------------------------------------------


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_count_requests_batches_and_items(server, admin):
    def query_count() -> float:
        samples = _samples(admin.get("/metrics").text)["clipmc_http_requests_total"]
        return sum(s.value for s in samples if s.labels == {"route": "/query", "method": "POST", "status": "200"})

    before = query_count()
    for pid in (1, 2, 3):
        assert query_multipart(admin, crop_bytes(pid, INFRARED_CAMERA)).status_code == 200
    assert query_count() == before + 3
    samples = _samples(admin.get("/metrics").text)
    assert samples["clipmc_embedding_batch_size_count"][0].value >= 3
    assert samples["clipmc_search_duration_seconds_count"][0].value >= 3
    assert samples["clipmc_embedding_queue_depth"][0].value == 0
    assert samples["clipmc_gallery_items"][0].value == admin.get("/gallery/stats").json()["count"]
    assert samples["clipmc_ready"][0].value == 1
    assert any(s.labels.get("status") == "422" for s in samples["clipmc_http_request_duration_seconds_count"])


@pytest.mark.parametrize(("max_batch", "max_wait_ms"), [(8, 400.0), (1, 0.0)])
def test_dynamic_batching_coalesces_concurrent_queries(tmp_path, embedder, max_batch, max_wait_ms):
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path, max_batch=max_batch, max_wait_ms=max_wait_ms)
    crops = [crop_bytes(pid, INFRARED_CAMERA) for pid in range(1, 9)]
    with live_server(create_app(settings, embedder=embedder)) as srv:
        with srv.client() as c:
            gallery = [(crop_bytes(pid, 1), {"modality": "visible", "external_id": str(pid)}) for pid in range(1, 9)]
            assert ingest_multipart(c, gallery).status_code == 200
            alone = [query_multipart(c, crop, top_k=3).json()["results"] for crop in crops]
        batcher = srv.state.batcher
        calls = batcher.calls
        barrier = threading.Barrier(len(crops))

        def one(crop: bytes) -> list[dict[str, Any]]:
            with srv.client() as c:
                barrier.wait()
                r = query_multipart(c, crop, top_k=3)
                assert r.status_code == 200, r.text
                return r.json()["results"]

        with ThreadPoolExecutor(len(crops)) as pool:
            together = list(pool.map(one, crops))
        made = batcher.calls - calls
        if max_batch == 1:
            assert made == len(crops)
        else:
            assert made < len(crops)  # at least two queries shared a model call
        sizes = _samples(srv.client().get("/metrics").text)["clipmc_embedding_batch_size_bucket"]
        le1 = next(s.value for s in sizes if s.labels["le"] == "1.0")
        total = next(s.value for s in sizes if s.labels["le"] == "+Inf")
        assert (le1 < total) == (max_batch > 1)
    # batching changes nothing in the answers
    for a, b in zip(alone, together, strict=True):
        assert [h["id"] for h in a] == [h["id"] for h in b]
        np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-4)


# -- readiness and start-up checks ------------------------------------------------------------------


def test_readyz_turns_ready_only_after_warmup(tmp_path, embedder):
    from clipmc.service.app import create_app

    gate = threading.Event()
    app = create_app(settings_for(tmp_path), embedder=GatedEmbedder(embedder, gate))
    with live_server(app, ready=False) as srv, srv.client() as c:
        try:
            err = assert_error(c.get("/readyz"), 503, "not_ready")
            assert "warming up" in err["message"]
            assert_error(query_multipart(c, crop_bytes(1, 3)), 503, "not_ready")
            assert c.get("/healthz").status_code == 200
            metrics = _samples(c.get("/metrics").text)
            assert metrics["clipmc_ready"][0].value == 0
        finally:
            gate.set()
        srv.wait_ready(timeout=30)
        assert c.get("/readyz").json()["status"] == "ready"
        assert query_multipart(c, crop_bytes(1, 3)).status_code == 200


def test_what_the_app_builds_at_start_up_it_closes(tmp_path, embedder, monkeypatch):
    """`uvicorn --factory` builds the embedder and gallery in the lifespan: shutdown releases both."""
    from clipmc.gallery import GalleryStateError
    from clipmc.service.app import create_app

    closed: list[str] = []

    class Owned(GatedEmbedder):
        def close(self) -> None:
            closed.append(self.embedding_version)

    built: list[Any] = []
    gate = threading.Event()
    gate.set()
    monkeypatch.setattr(
        "clipmc.service.app.build_embedder", lambda settings: built.append(settings) or Owned(embedder, gate)
    )
    with live_server(create_app(settings_for(tmp_path))) as srv, srv.client() as c:
        assert query_multipart(c, crop_bytes(1, 3)).status_code == 200
        gallery = srv.state.gallery
        assert closed == []
    assert len(built) == 1 and closed == [embedder.embedding_version]
    with pytest.raises(GalleryStateError):
        gallery.stats()


def test_gallery_of_another_embedding_version_is_refused(tmp_path, embedder):
    from clipmc.gallery import open_gallery
    from clipmc.service.app import create_app

    other = open_gallery(tmp_path / "gallery", embedder.embedding_dim, "clipmc-other.w000000000000.288x144")
    try:
        with pytest.raises(ValueError, match="embedding_version"):
            create_app(settings_for(tmp_path), embedder=embedder, gallery=other)
    finally:
        other.close()


def test_thumbnail_store_failures_are_logged_not_raised(tmp_path, caplog):
    """A thumbnail that cannot be read or removed costs the page a picture, never a 500."""
    from clipmc.service.thumbnails import ThumbnailStore

    store = ThumbnailStore(tmp_path / "thumbs")
    store.put_many([(1, b"\xff\xd8jpeg"), (2, None)])
    assert store.get(1) == b"\xff\xd8jpeg" and store.get(2) is None
    store.path(3).mkdir(parents=True)  # a directory where the file should be: read and unlink fail
    with caplog.at_level("WARNING", logger="clipmc.service.thumbnails"):
        assert store.get(3) is None
        store.delete(3)
    assert store.path(3).is_dir()
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "could not read the thumbnail of item 3",
        "could not remove the thumbnail of item 3",
    ]
    store.delete(1)
    assert store.get(1) is None
