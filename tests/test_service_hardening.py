"""Issue 16: what a hostile client, a crowded camera folder and a full disk found, each through the real
service (uvicorn on a loopback port, the tiny model, a real FAISS + SQLite gallery).

Each test names the issue item it covers.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from clipmc.cli import main
from tests.service_fixtures import (
    API_KEYS,
    KEYS,
    crop_bytes,
    ingest_multipart,
    live_server,
    query_multipart,
    settings_for,
)
from tests.test_gallery_erasure import files_holding

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    """One service for the input checks (items 2, 3, 4, 6, 7): they change nothing they do not undo."""
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path_factory.mktemp("hardening"), api_keys=API_KEYS)
    with live_server(create_app(settings, embedder=embedder)) as srv:
        yield srv


@pytest.fixture()
def admin(server):
    with server.client(KEYS["admin"]) as c:
        yield c


def error_of(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


# -- item 1: camera folders of one layout, and external ids reused for other crops ---------------------


def test_item1_same_layout_camera_folders_do_not_collide(tmp_path, embedder, capsys):
    from clipmc.service.app import create_app

    root = tmp_path / "sysu"
    for cam in ("cam1", "cam2"):
        for pid in (1, 2, 3):
            folder = root / cam / f"{pid:04d}"
            folder.mkdir(parents=True)
            (folder / "0001.png").write_bytes(crop_bytes(pid, 1 if cam == "cam1" else 2))
    app = create_app(settings_for(tmp_path), embedder=embedder)
    with live_server(app) as srv:
        for camera in ("1", "2"):
            folder = root / f"cam{camera}"
            code = main(["ingest", str(folder), "--camera", camera, "--modality", "visible", "--url", srv.url])
            assert code == 0
            assert "3 added, 0 already in the gallery" in capsys.readouterr().out
        with srv.client() as c:
            assert c.get("/gallery/stats").json()["count"] == 6
            assert c.get("/gallery/items/4").json()["external_id"] == "2:0001/0001.png"
            # an external id already stored with another camera or modality is a 409, never a silent skip
            first = {"external_id": "shared", "modality": "visible", "camera": "1"}
            assert ingest_multipart(c, [(crop_bytes(4, 1), first)]).json()["created"] == 1
            other_camera = {**first, "camera": "2"}
            error = error_of(ingest_multipart(c, [(crop_bytes(5, 2), other_camera)]), 409, "external_id_conflict")
            assert "camera" in error["message"]
            other_modality = {**first, "modality": "infrared"}
            error_of(ingest_multipart(c, [(crop_bytes(5, 3), other_modality)]), 409, "external_id_conflict")
            again = ingest_multipart(c, [(crop_bytes(4, 1), first)]).json()
            assert (again["created"], again["existing"]) == (0, 1)
            assert c.get("/gallery/stats").json()["count"] == 7
        assert main(["ingest", str(root / "cam1"), "--camera", "a:b", "--modality", "visible", "--url", srv.url]) == 2
        assert "hold no ':'" in capsys.readouterr().err


# -- item 2: metadata bounded at ingest ------------------------------------------------------------------


def test_item2_metadata_depth_keys_and_size_are_bounded(server, admin):
    crop = b64(crop_bytes(1, 1))
    cases = [
        (nested(300), "nested deeper than 16 levels"),
        ({f"k{i}": i for i in range(1100)}, "more than 1024 keys"),
        ({"blob": "x" * 70_000}, "larger than 65536 bytes"),
    ]
    for metadata, limit in cases:
        body = {"items": [{"modality": "visible", "image_base64": crop, "metadata": metadata}]}
        error = error_of(admin.post("/gallery/ingest", json=body), 422)
        assert limit in error["message"], error
    count = admin.get("/gallery/stats").json()["count"]
    deepest = nested(15, "leaf")  # the object plus 15 levels: 16, the limit
    body = {"items": [{"external_id": "deep-ok", "modality": "visible", "image_base64": crop, "metadata": deepest}]}
    r = admin.post("/gallery/ingest", json=body)
    assert r.status_code == 200, r.text
    hits = query_multipart(admin, crop_bytes(1, 3), top_k=50).json()["results"]  # serialises back
    assert any(hit["external_id"] == "deep-ok" and hit["metadata"] == deepest for hit in hits)
    admin.delete(f"/gallery/items/{r.json()['ids'][0]}")
    assert admin.get("/gallery/stats").json()["count"] == count


# -- item 3: absurdly nested JSON --------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [2000, 100_000])
def test_item3_deeply_nested_json_is_422_everywhere(server, admin, depth):
    deep = "[" * depth + "]" * depth
    files = [("images", ("a.png", crop_bytes(1, 1), "application/octet-stream"))]
    error_of(admin.post("/gallery/ingest", files=files, data={"items": deep}), 422, "invalid_json")
    headers = {"content-type": "application/json"}
    body = '{"items": ' + deep + "}"
    error_of(admin.post("/gallery/ingest", content=body, headers=headers), 422, "invalid_json")
    error_of(admin.post("/query", content='{"cameras": ' + deep + "}", headers=headers), 422, "invalid_json")
    error_of(admin.post("/gallery/erase", content='{"identity": ' + deep + "}", headers=headers), 422)
    assert admin.get("/healthz").status_code == 200


# -- item 4: timestamps in a sane range; the page shows a bad one instead of stopping ----------------------


def test_item4_timestamp_range_is_checked_at_ingest(server, admin):
    crop = b64(crop_bytes(1, 1))
    for bad in (1.7e15, -5, "3000-01-01T00:00:00Z"):
        body = {"items": [{"modality": "visible", "image_base64": crop, "timestamp": bad}]}
        error = error_of(admin.post("/gallery/ingest", json=body), 422, "validation_error")
        assert "timestamp" in error["message"] and "1970-01-01..2100-01-01" in error["message"]
    files = [(crop_bytes(1, 1), {"modality": "visible", "timestamp": 1_700_000_000_000_000})]
    assert "timestamp" in error_of(ingest_multipart(admin, files), 422)["message"]


@pytest.mark.skipif(shutil.which("node") is None, reason="no node binary to run the page's script")
def test_item4_page_formats_an_invalid_time_instead_of_throwing():
    script = (
        "const {formatTime} = require(process.argv[1]);"
        "console.log(JSON.stringify([formatTime(1.7e15), formatTime(1700000000), formatTime(null)]));"
    )
    out = subprocess.run(
        ["node", "-e", script, str(ROOT / "service" / "static" / "format.js")],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert json.loads(out) == ["invalid time (1700000000000000)", "2023-11-14T22:13:20Z", None]
    page = (ROOT / "service" / "static" / "index.html").read_text()
    assert page.index("/static/format.js") < page.index("/static/app.js")
    assert "formatTime(hit.timestamp)" in (ROOT / "service" / "static" / "app.js").read_text()


# -- item 5: loopback only while no key is configured, however the app is started ---------------------------


@pytest.mark.parametrize(("keys", "client", "status"), [(None, "10.1.2.3", 403), (None, "127.0.0.1", 200)])
def test_item5_no_key_means_loopback_clients_only(tmp_path, embedder, keys, client, status):
    import asyncio

    from clipmc.service.app import create_app

    app = create_app(settings_for(tmp_path), embedder=embedder)  # as `uvicorn --factory ... --host 0.0.0.0`

    async def call() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=(client, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
            return [await c.get("/healthz"), await c.get("/gallery/items/1"), await c.get("/")]

    for response in asyncio.run(call()):
        if status == 403:
            assert error_of(response, 403, "loopback_only")
        else:
            assert response.status_code != 403


def test_item5_with_keys_remote_clients_are_served_with_auth(tmp_path, embedder):
    import asyncio

    from clipmc.service.app import create_app

    app = create_app(settings_for(tmp_path, api_keys=API_KEYS), embedder=embedder)

    async def call() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as c:
            return await c.get("/healthz"), await c.get("/gallery/stats")

    health, stats = asyncio.run(call())
    assert health.status_code == 200
    assert error_of(stats, 401, "unauthorized")


# -- item 6: one external id twice in one batch -----------------------------------------------------------


def test_item6_repeated_external_id_in_one_batch_is_422(server, admin):
    count = admin.get("/gallery/stats").json()["count"]
    meta = {"external_id": "twice", "modality": "visible"}
    error = error_of(ingest_multipart(admin, [(crop_bytes(1, 1), meta), (crop_bytes(2, 1), meta)]), 422)
    assert error["code"] == "duplicate_external_id" and "twice" in error["message"]
    crop = b64(crop_bytes(1, 1))
    body = {
        "items": [
            {**meta, "image_base64": crop},
            {"modality": "visible", "image_base64": crop},
            {**meta, "image_base64": crop},
        ]
    }
    assert "items[2]" in error_of(admin.post("/gallery/ingest", json=body), 422, "duplicate_external_id")["message"]
    assert admin.get("/gallery/stats").json()["count"] == count


# -- item 7: a multipart items field that is not UTF-8 -------------------------------------------------------


def test_item7_non_utf8_multipart_items_is_422(server, admin):
    count = admin.get("/gallery/stats").json()["count"]
    latin1 = '[{"modality": "visible", "camera": "caf\u00e9"}]'.encode("latin-1")
    files = [("images", ("a.png", crop_bytes(1, 1), "application/octet-stream"))]
    error = error_of(admin.post("/gallery/ingest", files=files, data={"items": latin1}), 422, "invalid_encoding")
    assert "'items'" in error["message"] and "UTF-8" in error["message"]
    assert admin.get("/gallery/stats").json()["count"] == count
    # the same text in UTF-8 is stored as sent
    utf8 = '[{"external_id": "utf8-camera", "modality": "visible", "camera": "caf\u00e9"}]'
    r = admin.post("/gallery/ingest", files=files, data={"items": utf8})
    assert r.status_code == 200, r.text
    item_id = r.json()["ids"][0]
    assert admin.get(f"/gallery/items/{item_id}").json()["camera"] == "caf\u00e9"
    admin.delete(f"/gallery/items/{item_id}")


# -- item 8: only the project's input errors are 4xx ----------------------------------------------------------


class BuggyGallery:
    """The real gallery, except that ``search`` has a bug that raises a plain ValueError."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def search(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("an internal bug, not the client's fault")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_item8_internal_value_error_is_500_with_request_id_and_traceback(tmp_path, embedder, caplog):
    from clipmc.gallery import open_gallery
    from clipmc.service.app import create_app

    gallery = open_gallery(tmp_path / "g", embedder.embedding_dim, embedder.embedding_version)
    try:
        app = create_app(settings_for(tmp_path), embedder=embedder, gallery=BuggyGallery(gallery))
        with live_server(app) as srv, srv.client() as c, caplog.at_level(logging.ERROR, logger="clipmc.service"):
            r = query_multipart(c, crop_bytes(1, 3))
            error = error_of(r, 500, "internal_error")
            request_id = error["request_id"]
            assert request_id in error["message"] and r.headers["x-request-id"] == request_id
            assert "internal bug" not in error["message"]  # no internals in the answer
            (record,) = [rec for rec in caplog.records if request_id in rec.getMessage()]
            assert record.exc_info is not None and "internal bug" in str(record.exc_info[1])
            # the project's own input errors are still 4xx
            error_of(query_multipart(c, b"not an image"), 422, "invalid_image")
    finally:
        gallery.close()


# -- item 9: storage errors are 503, and a failed ingest stores nothing --------------------------------------


def test_item9_disk_full_is_503_stores_nothing_and_recovers(tmp_path, embedder, caplog):
    from clipmc.service.app import create_app

    app = create_app(settings_for(tmp_path), embedder=embedder)
    batch = [
        (crop_bytes(pid, 1), {"external_id": f"full-{pid}", "modality": "visible", "metadata": {"note": "x" * 6000}})
        for pid in range(1, 5)
    ]
    with live_server(app) as srv, srv.client() as c:
        assert (
            ingest_multipart(c, [(crop_bytes(9, 1), {"external_id": "before", "modality": "visible"})]).status_code
            == 200
        )
        gallery = srv.state.gallery
        # The database may not grow by a page: SQLite answers SQLITE_FULL ("database or disk is full"),
        # exactly as on a full disk. (The machine offers no tmpfs or loop device to fill for real.)
        writer = gallery._store._writer
        pages = writer.execute("PRAGMA page_count").fetchone()[0]
        writer.execute(f"PRAGMA max_page_count={pages}")
        with caplog.at_level(logging.ERROR, logger="clipmc.service"):
            r = ingest_multipart(c, batch)
        error = error_of(r, 503, "storage_full")
        assert "database or disk is full" in error["message"] and r.headers["retry-after"]
        assert any(error["request_id"] in rec.getMessage() for rec in caplog.records)
        assert c.get("/gallery/stats").json()["count"] == 1  # nothing half written
        assert sorted(p.name for p in (tmp_path / "gallery" / "thumbs").iterdir()) == ["1.jpg"]
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        assert query_multipart(c, crop_bytes(1, 3)).status_code == 200  # reads go on
        writer.execute("PRAGMA max_page_count=1073741823")  # space returns
        r = ingest_multipart(c, batch)
        assert r.status_code == 200, r.text
        assert r.json()["created"] == 4 and c.get("/gallery/stats").json()["count"] == 5


# -- item 10: a failed snapshot does not fail a stored batch ---------------------------------------------------


def test_item10_snapshot_failure_after_commit_answers_200(tmp_path, embedder, monkeypatch):
    import errno

    from clipmc.gallery import open_gallery
    from clipmc.gallery.index import VectorIndex
    from clipmc.service.app import create_app

    def disk_full(self: Any, target: Path) -> None:
        Path(target).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    gallery = open_gallery(tmp_path / "g", embedder.embedding_dim, embedder.embedding_version, snapshot_every=1)
    try:
        app = create_app(settings_for(tmp_path, maintenance_interval_s=0.2), embedder=embedder, gallery=gallery)
        with live_server(app) as srv, srv.client() as c:
            monkeypatch.setattr(VectorIndex, "save", disk_full)
            r = ingest_multipart(c, [(crop_bytes(1, 1), {"external_id": "s1", "modality": "visible"})])
            assert r.status_code == 200, r.text
            assert "No space left" in c.get("/gallery/stats").json()["snapshot_error"]
            assert not list((tmp_path / "g").glob("*.tmp"))
            monkeypatch.undo()
            deadline = time.monotonic() + 20  # the maintenance pass retries it
            while c.get("/gallery/stats").json()["snapshot_error"] is not None:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            stats = c.get("/gallery/stats").json()
            assert stats["snapshot_seq"] == stats["seq"]
    finally:
        gallery.close()


# -- item 11: a DELETE between the gallery write and the thumbnail write -----------------------------------------


def test_item11_delete_racing_an_ingest_leaves_no_thumbnail(tmp_path, embedder):
    from clipmc.service.app import create_app
    from clipmc.service.thumbnails import ThumbnailStore

    app = create_app(settings_for(tmp_path), embedder=embedder)
    with live_server(app) as srv, srv.client() as c:

        class DeleteFirst(ThumbnailStore):
            """Lands a DELETE for each item just before its thumbnail is written."""

            def put_many(self, pairs: list[tuple[int, bytes | None]]) -> None:
                with srv.client() as other:
                    for item_id, _ in pairs:
                        assert other.delete(f"/gallery/items/{item_id}").status_code == 200
                super().put_many(pairs)

        srv.state.thumbnails = DeleteFirst(tmp_path / "gallery" / "thumbs")
        r = ingest_multipart(
            c, [(crop_bytes(1, 1), {"modality": "visible"}), (crop_bytes(2, 1), {"modality": "visible"})]
        )
        assert r.status_code == 200, r.text
        for item_id in r.json()["ids"]:
            error_of(c.get(f"/gallery/items/{item_id}/thumbnail"), 404, "not_found")
            assert not (tmp_path / "gallery" / "thumbs" / f"{item_id}.jpg").exists()


# -- item 13: warm-up retried with back-off ----------------------------------------------------------------------


class FlakyWarmup:
    def __init__(self, inner: Any, failures: int) -> None:
        self._inner = inner
        self.failures = failures
        self.attempts = 0

    def warmup(self) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RuntimeError(f"device busy (attempt {self.attempts})")
        self._inner.warmup()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_item13_failed_warmup_is_retried_and_readyz_says_why(tmp_path, embedder):
    from clipmc.service.app import create_app

    flaky = FlakyWarmup(embedder, failures=2)
    app = create_app(settings_for(tmp_path, warmup_backoff_s=0.3), embedder=flaky)
    with live_server(app, ready=False) as srv, srv.client() as c:
        deadline = time.monotonic() + 20
        while True:
            r = c.get("/readyz")
            if r.status_code == 503 and "failed" in r.json()["error"]["message"]:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.02)
        message = r.json()["error"]["message"]
        assert "warm-up attempt" in message and "device busy" in message and "retrying in" in message
        srv.wait_ready(timeout=30)
        assert flaky.attempts == 3


# -- item 14: failed authentications are limited per client --------------------------------------------------------


def test_item14_repeated_failed_authentication_is_429(tmp_path, embedder):
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path, api_keys=API_KEYS, auth_failure_limit=3, auth_failure_window_s=60)
    with live_server(create_app(settings, embedder=embedder)) as srv:
        with srv.client() as anonymous:
            for _ in range(5):  # no key at all: a plain 401, not counted as a guess
                error_of(anonymous.get("/gallery/stats"), 401)
        with srv.client("wrong-key-000000") as guesser:
            for _ in range(3):
                error_of(guesser.get("/gallery/stats"), 401, "unauthorized")
            r = guesser.get("/gallery/stats")
            error_of(r, 429, "too_many_failed_authentications")
            assert 1 <= int(r.headers["retry-after"]) <= 60
        with srv.client(KEYS["admin"]) as right:  # same client address: still refused for the window
            error_of(right.get("/gallery/stats"), 429)
            assert right.get("/healthz").status_code == 200


# -- item 15: erasure that reaches the disk, by id, by filter and by retention -----------------------------------------


def test_item15_erased_items_leave_every_file_within_the_bound(tmp_path, embedder):
    from clipmc.service.app import create_app

    interval = 0.3  # CLIPMC_MAINTENANCE_INTERVAL_S: the documented bound is one interval plus a snapshot write
    settings = settings_for(tmp_path, api_keys=API_KEYS, maintenance_interval_s=interval)
    folder = tmp_path / "gallery"
    with live_server(create_app(settings, embedder=embedder)) as srv, srv.client(KEYS["admin"]) as c:
        crops = [
            (
                crop_bytes(pid, cam),
                {
                    "external_id": f"{pid}-{cam}",
                    "modality": "visible",
                    "camera": cam,
                    "identity": f"p{pid}",
                    "metadata": {"marker": f"MARKER-{pid}-{cam}"},
                },
            )
            for pid in (1, 2, 3)
            for cam in (1, 2)
        ]
        ids = ingest_multipart(c, crops).json()["ids"]
        gallery = srv.state.gallery
        vectors = {i: gallery.get(i).vector for i in ids}
        needles = {
            i: (np.asarray(vectors[i], "<f4").tobytes(), np.asarray(vectors[i], "<f4").tobytes()[:32], marker.encode())
            for i, marker in zip(ids, (f"MARKER-{pid}-{cam}" for pid in (1, 2, 3) for cam in (1, 2)), strict=True)
        }
        gallery.snapshot()  # the vectors are in every kind of file before the erasure
        assert files_holding(folder, *needles[ids[0]])

        assert c.delete(f"/gallery/items/{ids[0]}").json() == {"id": ids[0], "deleted": True}
        error_of(c.get(f"/gallery/items/{ids[0]}/thumbnail"), 404)  # at once
        r = c.post("/gallery/erase", json={"identity": "p2"})
        assert r.json() == {"deleted": 2, "compaction_within_s": interval}
        error_of(c.post("/gallery/erase", json={}), 422, "validation_error")
        with srv.client(KEYS["ingest"]) as ingest_only:
            error_of(ingest_only.post("/gallery/erase", json={"identity": "p3"}), 403)

        time.sleep(interval)
        deadline = time.monotonic() + 30
        while c.get("/gallery/stats").json()["removed_since_compaction"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for erased in (ids[0], ids[2], ids[3]):
            assert files_holding(folder, *needles[erased]) == [], erased
            assert not (folder / "thumbs" / f"{erased}.jpg").exists()
        assert files_holding(folder, needles[ids[4]][0])  # the kept ones are still there
        text = c.get("/metrics").text
        assert metric(text, "clipmc_erased_items_total", reason="delete") == 1
        assert metric(text, "clipmc_erased_items_total", reason="filter") == 2
        assert metric(text, "clipmc_gallery_compactions_total") >= 1
        assert c.get("/gallery/stats").json()["count"] == 3


def test_item15_retention_deletes_old_items_on_schedule(tmp_path, embedder):
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path, retention_days=1, maintenance_interval_s=0.2)
    now = time.time()
    with live_server(create_app(settings, embedder=embedder)) as srv, srv.client() as c:
        old = {"external_id": "old", "modality": "visible", "timestamp": now - 2 * 86400}
        fresh = {"external_id": "fresh", "modality": "visible", "timestamp": now - 3600}
        undated = {"external_id": "undated", "modality": "visible"}  # ingested now: kept
        ids = ingest_multipart(
            c, [(crop_bytes(1, 1), old), (crop_bytes(2, 1), fresh), (crop_bytes(3, 1), undated)]
        ).json()["ids"]
        deadline = time.monotonic() + 20
        while c.get(f"/gallery/items/{ids[0]}").status_code != 404:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get(f"/gallery/items/{ids[1]}").status_code == 200
        assert c.get(f"/gallery/items/{ids[2]}").status_code == 200
        assert not (tmp_path / "gallery" / "thumbs" / f"{ids[0]}.jpg").exists()
        assert metric(c.get("/metrics").text, "clipmc_erased_items_total", reason="retention") == 1


def test_settings_read_retention_from_the_environment(monkeypatch):
    from clipmc.service.settings import Settings

    monkeypatch.setenv("CLIPMC_RETENTION_DAYS", "30")
    monkeypatch.setenv("CLIPMC_MAINTENANCE_INTERVAL_S", "120")
    settings = Settings()
    assert settings.retention_days == 30 and settings.maintenance_interval_s == 120
    monkeypatch.setenv("CLIPMC_RETENTION_DAYS", "0")
    with pytest.raises(ValueError, match="retention_days"):
        Settings()


@pytest.mark.parametrize("batch", ["bf16", "int8"])
def test_settings_choose_the_gallerys_exact_and_batch_scans(monkeypatch, tmp_path, batch):
    from types import SimpleNamespace

    from clipmc.gallery.batch_int8 import integer_product_is_exact
    from clipmc.service.app import open_service_gallery
    from clipmc.service.settings import Settings

    if batch == "int8" and not integer_product_is_exact():
        pytest.skip("ONNX Runtime's integer product saturates on this CPU (no VNNI)")
    monkeypatch.setenv("CLIPMC_GALLERY_EXACT_SCAN", "int8")
    monkeypatch.setenv("CLIPMC_GALLERY_BATCH_SCAN", batch)
    settings = Settings(gallery=tmp_path / "g")
    embedder = SimpleNamespace(embedding_dim=8, embedding_version="test@1")
    with open_service_gallery(settings, embedder) as gallery:
        index = gallery.stats()["index"]
        assert index["exact_scan"]["codes"] == "int8" and index["batch_scan"]["codes"] == batch
    monkeypatch.setenv("CLIPMC_GALLERY_IVF_SCAN", "off")
    assert Settings().gallery_ivf_scan == "off"
    monkeypatch.setenv("CLIPMC_GALLERY_BATCH_SCAN", "fp8")
    with pytest.raises(ValueError, match="gallery_batch_scan"):
        Settings()
