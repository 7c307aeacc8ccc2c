"""Service settings: environment, config file, precedence, API keys, loopback binding; the auth unit
that needs no server (the batcher's tests are in test_batching.py)."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from clipmc.service.auth import KeyRing
from clipmc.service.errors import APIError
from clipmc.service.settings import Settings, SettingsFileError, is_loopback, key_digest, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("CLIPMC_"):
            monkeypatch.delenv(name)


def test_defaults_start_a_local_service():
    s = Settings()
    assert (s.weights, s.backend, s.device, s.gallery_backend) == ("openai", "auto", "auto", "faiss")
    assert str(s.gallery) == "data/gallery" and s.host == "127.0.0.1" and not s.auth_enabled
    assert str(s.thumbnails_path) == "data/gallery/thumbs"


def test_environment_values(monkeypatch):
    monkeypatch.setenv("CLIPMC_WEIGHTS", "runs/best")
    monkeypatch.setenv("CLIPMC_BACKEND", "onnxruntime")
    monkeypatch.setenv("CLIPMC_BATCH_SIZES", "8,1,4")
    monkeypatch.setenv("CLIPMC_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("CLIPMC_IMAGE_FORMATS", "jpeg,png")
    monkeypatch.setenv("CLIPMC_LOG_JSON", "true")
    s = Settings()
    assert s.weights == "runs/best" and s.backend == "onnxruntime"
    assert s.batch_sizes == (1, 4, 8) and s.max_wait_ms == 2.5
    assert s.image_formats == ("JPEG", "PNG") and s.log_json is True


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"CLIPMC_BACKEND": "tflite"}, "backend"),
        ({"CLIPMC_MAX_BATCH": "0"}, "max_batch"),
        ({"CLIPMC_IMAGE_FORMATS": "JPEG,XYZ"}, "image_formats"),
        ({"CLIPMC_API_KEYS": "secret-key-without-scope"}, "api_keys"),
        ({"CLIPMC_API_KEYS": "short:query"}, "8 characters"),
        ({"CLIPMC_API_KEYS": "long-enough-key:delete"}, "api_keys"),
    ],
)
def test_bad_environment_values_name_the_setting(monkeypatch, env, problem):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=problem):
        Settings()


def test_api_keys_compact_json_and_digest_forms(monkeypatch):
    digest = key_digest("third-key-abcdef")
    monkeypatch.setenv("CLIPMC_API_KEYS", f"first-key-123456:query,ingest; second-key-7890:admin;{digest}:query")
    s = Settings()
    assert [sorted(k.scopes) for k in s.api_keys] == [["ingest", "query"], ["admin"], ["query"]]
    assert "first-key-123456" not in repr(s) and "first-key-123456" not in s.model_dump_json()
    ring = KeyRing(s.api_keys)
    assert ring.identify("first-key-123456").allows("ingest")
    assert not ring.identify("first-key-123456").allows("admin")
    assert ring.identify("second-key-7890").allows("ingest")  # admin implies every scope
    assert ring.identify("third-key-abcdef").scopes == {"query"}
    assert ring.identify("first-key-12345") is None

    monkeypatch.setenv("CLIPMC_API_KEYS", json.dumps([{"key": "json-key-000000", "scopes": ["query"], "name": "ui"}]))
    (key,) = Settings().api_keys
    assert key.name == "ui" and key.digest == key_digest("json-key-000000")


def test_keyring_answers_401_and_403():
    ring = KeyRing(Settings(api_keys="reader-key-0000:query").api_keys)
    with pytest.raises(APIError) as missing:
        ring.authenticate(None)
    assert missing.value.status == 401 and missing.value.headers == {"WWW-Authenticate": "Bearer"}
    with pytest.raises(APIError) as wrong:
        ring.authenticate("Bearer reader-key-0001")
    assert wrong.value.status == 401
    assert ring.authenticate("bearer reader-key-0000").name
    assert KeyRing([]).authenticate(None).allows("admin")  # auth off


def test_config_file_precedence(tmp_path, monkeypatch):
    toml = tmp_path / "clipmc.toml"
    toml.write_text('port = 9001\nmax_batch = 4\nweights = "from-file"\nbatch_sizes = [1, 4]\n')
    s = load_settings(config=toml)
    assert (s.port, s.max_batch, s.weights, s.batch_sizes) == (9001, 4, "from-file", (1, 4))
    monkeypatch.setenv("CLIPMC_CONFIG", str(toml))
    monkeypatch.setenv("CLIPMC_MAX_BATCH", "16")
    s = load_settings(weights="from-flag", port=None)  # None: the flag was not given
    assert (s.port, s.max_batch, s.weights) == (9001, 16, "from-flag")

    js = tmp_path / "clipmc.json"
    js.write_text(json.dumps({"max_wait_ms": 7, "api_keys": "file-key-000000:ingest"}))
    s = load_settings(config=js)
    assert s.max_wait_ms == 7 and s.api_keys[0].scopes == {"ingest"}


def test_bad_config_files(tmp_path):
    with pytest.raises(SettingsFileError, match="not found"):
        load_settings(config=tmp_path / "missing.toml")
    yaml = tmp_path / "c.yaml"
    yaml.write_text("port: 1")
    with pytest.raises(SettingsFileError, match=r"\.toml or \.json"):
        load_settings(config=yaml)
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1\n")
    with pytest.raises(SettingsFileError, match=r"broken\.toml"):
        load_settings(config=broken)
    typo = tmp_path / "typo.toml"
    typo.write_text("max_bach = 3\n")
    with pytest.raises(ValidationError, match="max_bach"):
        load_settings(config=typo)


def test_loopback_and_bind_override(caplog):
    from clipmc.service.commands import bind_host

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    with caplog.at_level(logging.WARNING, logger="clipmc.service"):
        assert bind_host(Settings(host="0.0.0.0")) == "127.0.0.1"
    assert "no API key" in caplog.text and "0.0.0.0" in caplog.text
    assert bind_host(Settings(host="0.0.0.0", api_keys="some-key-000000:query")) == "0.0.0.0"
