"""Issue 14 in the service: tracklet queries, group_by=track, calibrated match fields, re-ranking opt-in.

A real uvicorn server on a loopback port with the tiny model; the gallery holds tracks of three crops
per person and camera, and a few crops without a track id.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest

from clipmc.model.calibration import CALIBRATION_FILE
from clipmc.model.rerank import average_query_expansion, k_reciprocal_rerank
from tests.service_fixtures import (
    CAL_PROBS,
    CAL_SCORES,
    INFRARED_CAMERA,
    KEYS,
    VISIBLE_CAMERAS,
    crop_bytes,
    ingest_multipart,
    live_server,
    settings_for,
    write_calibration,
)

PIDS = range(1, 7)
CROPS_PER_TRACK = 3
THRESHOLD = 0.91  # inside the untrained tiny model's similarities on these crops (about 0.87 to 0.94)


@pytest.fixture(scope="module")
def embedder(tiny_checkpoint):
    from clipmc.export import create_embedder

    return create_embedder("torch", str(tiny_checkpoint), batch_sizes=(1, 8))


def _gallery_crops() -> list[tuple[bytes, dict]]:
    crops = []
    for pid in PIDS:
        for cam in VISIBLE_CAMERAS:
            for index in range(CROPS_PER_TRACK):
                meta = {"external_id": f"{cam}/{pid}/{index}", "modality": "visible", "camera": cam}
                meta["track_id"] = f"t{pid}"  # the same track id on two cameras: two tracks
                crops.append((crop_bytes(pid, cam, index), meta))
    for pid in (1, 2):  # crops without a track id stay individual results under group_by=track
        crops.append((crop_bytes(pid, 1, 7), {"external_id": f"loose/{pid}", "modality": "visible", "camera": 1}))
    return crops


def _ingest(srv) -> None:
    with srv.client(KEYS["admin"]) as c:
        crops = _gallery_crops()
        for start in range(0, len(crops), 16):
            r = ingest_multipart(c, crops[start : start + 16])
            assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedder):
    """A service without a calibration."""
    from clipmc.service.app import create_app

    settings = settings_for(tmp_path_factory.mktemp("op"), api_keys=f"{KEYS['admin']}:admin")
    with live_server(create_app(settings, embedder=embedder)) as srv:
        _ingest(srv)
        yield srv


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, embedder):
    """A service with a hand-written calibration named by the ``calibration`` setting."""
    from clipmc.service.app import create_app

    tmp = tmp_path_factory.mktemp("op-cal")
    path = write_calibration(tmp / "cal.json", embedder.embedding_version, threshold=THRESHOLD)
    settings = settings_for(tmp, api_keys=f"{KEYS['admin']}:admin", calibration=path)
    with live_server(create_app(settings, embedder=embedder)) as srv:
        _ingest(srv)
        yield srv


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tracklet() -> list[bytes]:
    return [crop_bytes(2, INFRARED_CAMERA, index) for index in range(3)]


def _service_vectors(embedder, datas: list[bytes], modality: int) -> np.ndarray:
    """What the service embeds for these files: its own decoding, then the model."""
    from clipmc.service.images import ImageLimits, decode_image

    limits = ImageLimits(max_bytes=1 << 24, max_pixels=1 << 24, max_side=8192, formats=("PNG", "JPEG"))
    crops = np.stack([decode_image(d, limits, embedder.image_size, what="x").crop for d in datas])
    return embedder.embed(crops, np.full(len(crops), modality))


# -- tracklet queries -------------------------------------------------------------------------------


def test_fuse_tracklet_is_the_renormalised_mean_of_unit_vectors():
    from clipmc.service.search import fuse_tracklet

    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 16)).astype(np.float32) * np.array([[1.0], [3.0], [0.2], [7.0]], np.float32)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    expected = unit.mean(0) / np.linalg.norm(unit.mean(0))
    np.testing.assert_allclose(fuse_tracklet(raw), expected, atol=1e-6)  # every crop weighs the same
    np.testing.assert_allclose(fuse_tracklet(unit[:1]), unit[0], atol=1e-6)
    with pytest.raises(ValueError, match="cancel out"):
        fuse_tracklet(np.stack([unit[0], -unit[0]]))


def test_tracklet_query_searches_with_the_fused_single_crop_vectors(server, embedder):
    datas = _tracklet()
    singles = _service_vectors(embedder, datas, 1)
    fused = singles.mean(0) / np.linalg.norm(singles.mean(0))
    with server.client(KEYS["admin"]) as c:
        r = c.post("/query", files=[("image", (f"{i}.png", d)) for i, d in enumerate(datas)], data={"top_k": "8"})
        assert r.status_code == 200, r.text
        body = r.json()
        as_json = c.post("/query", json={"images_base64": [_b64(d) for d in datas], "top_k": 8}).json()
    assert body["query_crops"] == 3 and len(body["results"]) == 8
    gallery = server.state.gallery
    stored = np.stack([gallery.get(hit["id"]).vector for hit in body["results"]])
    np.testing.assert_allclose([hit["score"] for hit in body["results"]], stored @ fused, atol=1e-5)
    # the same ranking as a direct search with the fused vector, and multipart == JSON
    direct = gallery.search(fused, 8, _visible())[0]
    assert [hit["id"] for hit in body["results"]] == [h.id for h in direct]
    assert [hit["id"] for hit in as_json["results"]] == [hit["id"] for hit in body["results"]]
    assert as_json["query_crops"] == 3


def test_a_one_crop_tracklet_is_the_single_crop_query(server):
    data = crop_bytes(4, INFRARED_CAMERA, 1)
    with server.client(KEYS["admin"]) as c:
        single = c.post("/query", json={"image_base64": _b64(data), "top_k": 5}).json()
        one = c.post("/query", json={"images_base64": [_b64(data)], "top_k": 5}).json()
    assert set(single) == {"query_modality", "results", "took_ms"}  # DESIGN.md section 8, unchanged
    assert [(h["id"], h["score"]) for h in single["results"]] == [(h["id"], h["score"]) for h in one["results"]]


def test_a_bad_crop_in_a_tracklet_is_named(server):
    datas = _tracklet()
    with server.client(KEYS["admin"]) as c:
        r = c.post("/query", json={"images_base64": [_b64(datas[0]), _b64(b"not an image")]})
    assert r.status_code == 422 and "images_base64[1]" in r.json()["error"]["message"]


def _visible():
    from clipmc.gallery import Filters

    return Filters(modality=0)


# -- group_by=track ---------------------------------------------------------------------------------


def test_group_by_track_gives_one_result_per_track(server):
    with server.client(KEYS["admin"]) as c:
        plain = c.post("/query", json={"images_base64": [_b64(d) for d in _tracklet()], "top_k": 10}).json()
        grouped = c.post(
            "/query", json={"images_base64": [_b64(d) for d in _tracklet()], "top_k": 10, "group_by": "track"}
        ).json()
        everything = c.post(
            "/query", json={"image_base64": _b64(_tracklet()[0]), "top_k": 50, "group_by": "track"}
        ).json()
    plain_tracks = [(h["camera"], h["track_id"]) for h in plain["results"] if h["track_id"]]
    assert len(plain_tracks) > len(set(plain_tracks))  # without grouping a track fills several places
    assert grouped["group_by"] == "track" and len(grouped["results"]) == 10  # widened until 10 tracks
    keys = [(h["camera"], h["track_id"]) for h in grouped["results"] if h["track_id"] is not None]
    assert len(keys) == len(set(keys))
    for hit in grouped["results"]:
        assert (hit["track_id"] is None) == ("track_crops" not in hit)
    # each track's best crop: the first of its crops in the plain ranking, and scores stay sorted
    best_plain = {}
    for h in plain["results"]:
        best_plain.setdefault((h["camera"], h["track_id"]), h["id"])
    for h in grouped["results"]:
        if (h["camera"], h["track_id"]) in best_plain:
            assert h["id"] == best_plain[(h["camera"], h["track_id"])]
    scores = [h["score"] for h in grouped["results"]]
    assert scores == sorted(scores, reverse=True)
    # the whole gallery: 6 people x 2 cameras = 12 tracks of 3 crops, plus 2 loose crops
    results = everything["results"]
    assert len(results) == len(PIDS) * len(VISIBLE_CAMERAS) + 2
    assert sorted(h["track_crops"] for h in results if h["track_id"]) == [CROPS_PER_TRACK] * 12
    assert sum(h["track_id"] is None for h in results) == 2


# -- calibration --------------------------------------------------------------------------------------


def test_no_calibration_no_match_fields(server):
    with server.client(KEYS["admin"]) as c:
        body = c.post("/query", json={"image_base64": _b64(_tracklet()[0]), "top_k": 5}).json()
        ready = c.get("/readyz").json()
    assert "calibration" not in body
    assert all("match_probability" not in h and "is_match" not in h for h in body["results"])
    assert ready["calibration"] is None


def test_calibrated_service_returns_probability_and_match(calibrated):
    with calibrated.client(KEYS["admin"]) as c:
        body = c.post("/query", json={"images_base64": [_b64(d) for d in _tracklet()], "top_k": 50}).json()
        ready = c.get("/readyz").json()
    assert body["calibration"]["threshold"] == THRESHOLD and body["calibration"]["target_fmr"] == 0.01
    assert ready["calibration"]["threshold"] == THRESHOLD
    scores = np.array([h["score"] for h in body["results"]])
    probs = np.array([h["match_probability"] for h in body["results"]])
    np.testing.assert_allclose(probs, np.interp(scores, CAL_SCORES, CAL_PROBS), atol=1e-5)
    assert [h["is_match"] for h in body["results"]] == [bool(s >= THRESHOLD) for s in scores]
    assert {True, False} == {h["is_match"] for h in body["results"]}, "the fixture should straddle the threshold"


def test_calibration_of_another_model_is_refused(tmp_path, embedder):
    from clipmc.model.calibration import CalibrationError
    from clipmc.service.app import load_service_calibration

    path = write_calibration(tmp_path / "cal.json", "clipmc-tiny.wdeadbeef", threshold=0.5)
    with pytest.raises(CalibrationError, match="embedding_version"):
        load_service_calibration(settings_for(tmp_path, calibration=path), embedder)


def test_checkpoint_calibration_is_found_by_default(tmp_path, tiny_checkpoint, embedder):
    import shutil

    from clipmc.service.app import load_service_calibration

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    assert load_service_calibration(settings_for(tmp_path, weights=str(ckpt)), embedder) is None
    write_calibration(ckpt / CALIBRATION_FILE, embedder.embedding_version, threshold=0.4)
    found = load_service_calibration(settings_for(tmp_path, weights=str(ckpt)), embedder)
    assert found is not None and found.threshold == 0.4


def test_serve_refuses_a_calibration_of_another_model_in_one_line(tmp_path, tiny_checkpoint, capsys):
    from clipmc.cli import main

    path = write_calibration(tmp_path / "cal.json", "clipmc-tiny.wdeadbeef", threshold=0.5)
    gallery = str(tmp_path / "g")
    code = main(["serve", "--weights", str(tiny_checkpoint), "--gallery", gallery, "--calibration", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("clipmc serve: error:")]
    assert "embedding_version" in line and "clipmc calibrate" in line


# -- re-ranking ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["k-reciprocal", "aqe"])
def test_rerank_is_opt_in_labelled_and_matches_the_algorithm(server, embedder, kind):
    data = _tracklet()[0]
    with server.client(KEYS["admin"]) as c:
        plain = c.post("/query", json={"image_base64": _b64(data), "top_k": 10}).json()
        body = c.post("/query", json={"image_base64": _b64(data), "top_k": 10, "rerank": kind}).json()
    assert "rerank" not in plain and all("rerank_distance" not in h for h in plain["results"])
    info = body["rerank"]
    assert info["kind"] == kind and info["label"].startswith("re-ranked")
    n_visible = len(PIDS) * len(VISIBLE_CAMERAS) * CROPS_PER_TRACK + 2
    assert info["candidates"] == n_visible  # fewer than 100 visible items: all of them
    # direct: the same candidates with their stored vectors, re-ranked by clipmc.model.rerank
    query = _service_vectors(embedder, [data], 1)[0]
    hits = server.state.gallery.search(query, 100, _visible(), with_vectors=True)[0]
    gallery = np.stack([h.item.vector for h in hits])
    if kind == "k-reciprocal":
        dist = k_reciprocal_rerank(query[None], gallery, 20, 6, 0.3)[0]
    else:
        dist = -(average_query_expansion(query[None], gallery, 5) @ gallery.T)[0]
    order = np.argsort(dist, kind="stable")[:10]
    assert [h["id"] for h in body["results"]] == [hits[i].id for i in order]
    np.testing.assert_allclose([h["rerank_distance"] for h in body["results"]], dist[order], atol=1e-5)
    # score stays the inner product with the query
    np.testing.assert_allclose([h["score"] for h in body["results"]], [hits[i].score for i in order], atol=1e-5)
