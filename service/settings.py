"""The service's settings: one object per process, from the environment, a config file and CLI flags.

Precedence, highest first: explicit keyword arguments (the CLI flags), ``CLIPMC_*`` environment
variables, the config file (``CLIPMC_CONFIG`` or ``config=...``: TOML or JSON, flat keys named like the
fields below), then the embedded defaults, which start a working service on a laptop: the torch
back-end on the CPU, OpenAI's CLIP weights and a FAISS gallery under ``./data/gallery``.

API keys are hashed as soon as they are parsed, so neither the settings object nor its ``repr`` (which
may end up in logs) holds a usable key.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

SCOPES = ("query", "ingest", "admin")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
#: Formats Pillow decodes that a camera pipeline produces; everything else is refused before decoding.
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


class SettingsFileError(ValueError):
    """The config file is missing, unreadable or not TOML/JSON."""


def key_digest(key: str) -> str:
    """The stored form of an API key: ``sha256:<hex>`` (keys are long random tokens, so no salt)."""
    return "sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


class APIKey(BaseModel):
    """One API key, kept only as its digest, and the scopes it grants (admin implies all)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    digest: str
    scopes: frozenset[Literal["query", "ingest", "admin"]]
    name: str = ""

    @model_validator(mode="before")
    @classmethod
    def _hash_plain_key(cls, data: Any) -> Any:
        """Accept ``{"key": ...}`` (plain text, hashed here) or ``{"digest": "sha256:..."}``."""
        if isinstance(data, dict) and "key" in data:
            data = dict(data)
            key = str(data.pop("key"))
            data["digest"] = key if _DIGEST.match(key) else key_digest(_check_key(key))
        if isinstance(data, dict) and isinstance(data.get("scopes"), str):
            data = {**data, "scopes": [s.strip() for s in data["scopes"].split(",") if s.strip()]}
        return data

    @field_validator("digest")
    @classmethod
    def _check_digest(cls, value: str) -> str:
        if not _DIGEST.match(value):
            raise ValueError("an API key digest is 'sha256:' followed by 64 lowercase hex digits")
        return value

    @field_validator("scopes")
    @classmethod
    def _non_empty(cls, value: frozenset[str]) -> frozenset[str]:
        if not value:
            raise ValueError(f"an API key needs at least one scope of {', '.join(SCOPES)}")
        return value


def _check_key(key: str) -> str:
    if len(key) < 8:
        raise ValueError("API keys must be at least 8 characters long")
    if any(c.isspace() for c in key):
        raise ValueError("API keys must not contain whitespace")
    return key


def parse_api_keys(value: Any) -> list[dict[str, Any]] | Any:
    """``'key1:query,ingest;key2:admin'``, a JSON list (of such strings or of objects), or a list.

    A key may be given as its digest, ``sha256:<hex>:scopes``, so that config files hold no secret.
    """
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"api_keys looks like JSON but is not valid JSON: {exc}") from None
        else:
            value = [part for part in text.split(";") if part.strip()]
    if not isinstance(value, (list, tuple)):
        return value  # let pydantic report the type
    out: list[Any] = []
    for entry in value:
        if isinstance(entry, str):
            key, sep, scopes = entry.strip().rpartition(":")
            if not sep or not key:
                raise ValueError("each API key is written 'KEY:scope[,scope...]' with scopes from " + ", ".join(SCOPES))
            out.append({"key": key, "scopes": scopes})
        else:
            out.append(entry)
    return out


class Settings(BaseSettings):
    """Everything the service can be told; see the module docstring for where values come from."""

    model_config = SettingsConfigDict(env_prefix="CLIPMC_", extra="forbid", validate_default=True)

    config: Path | None = Field(None, description="TOML or JSON file with more settings (CLIPMC_CONFIG)")

    # model / runtime (export.create_embedder)
    weights: str = Field("openai", description="checkpoint directory, 'openai', an .onnx or an .engine file")
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto", description="auto: TensorRT on a CUDA host that has it, else ONNX Runtime (export.selection)"
    )
    device: str = Field("auto", description="auto (a CUDA GPU when present), cpu, cuda or cuda:N")
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto", description="auto: fp16 on TensorRT, fp32 elsewhere; int8 and bf16 are CPU opt-ins"
    )
    engine_dir: Path | None = None
    batch_sizes: Annotated[tuple[int, ...], NoDecode] = (1, 8, 32)
    calibration: Path | None = Field(
        None,
        description="calibration.json from clipmc calibrate (default: the one in a checkpoint directory, if any)",
    )

    # gallery
    gallery: Path = Path("data/gallery")
    gallery_backend: Literal["faiss", "milvus"] = "faiss"
    gallery_exact_scan: Literal["fp16", "int8", "float32"] = Field(
        "int8", description="FAISS gallery: the copy one exact query scans (gallery.IndexConfig.exact_scan)"
    )
    gallery_batch_scan: Literal["auto", "off", "bf16", "int8"] = Field(
        "auto",
        description="FAISS gallery: 'bf16' or 'int8' scores coalesced batches from a bf16 or int8 copy; 'auto': "
        "int8 where the CPU's integer product is exact (VNNI), else off (IndexConfig.batch_scan)",
    )
    gallery_ivf_scan: Literal["8bit", "off"] = Field(
        "8bit", description="FAISS gallery: '8bit' scans IVF lists from an 8-bit copy, re-ranked (IndexConfig.ivf_scan)"
    )
    milvus_uri: str | None = Field(None, description="Milvus server URI; unset: Milvus Lite in the gallery dir")
    thumbnails_dir: Path | None = Field(None, description="default: <gallery>/thumbs")
    thumbnail_size: int = Field(160, ge=16, le=512, description="longest side of stored thumbnails")

    # dynamic batching
    max_batch: int = Field(32, ge=1, le=1024)
    max_wait_ms: float = Field(5.0, ge=0.0, le=1000.0)
    max_queue: int = Field(1024, ge=1)
    search_max_batch: int = Field(64, ge=1, le=1024, description="most /query searches run as one batch (1: off)")

    # auth
    api_keys: Annotated[list[APIKey], NoDecode] = Field(default_factory=list)
    metrics_require_auth: bool = False
    auth_failure_limit: int = Field(10, ge=0, description="failed authentications per client per window (0: off)")
    auth_failure_window_s: float = Field(60.0, gt=0.0, le=86400.0)

    # start-up
    warmup_backoff_s: float = Field(1.0, gt=0.0, le=60.0, description="first delay before retrying a warm-up")

    # erasure and retention (DESIGN.md / README "Erasure")
    retention_days: float | None = Field(None, gt=0.0, description="delete items older than this, on a schedule")
    maintenance_interval_s: float = Field(
        60.0, gt=0.0, le=3600.0, description="how often retention runs and removals are compacted off the disk"
    )

    # limits
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(16 * 1024 * 1024, ge=64)
    max_image_pixels: int = Field(4096 * 4096, ge=64, le=89_478_485)  # <= Pillow's own bomb limit
    max_image_side: int = Field(8192, ge=8)
    max_files: int = Field(256, ge=1)
    image_formats: Annotated[tuple[str, ...], NoDecode] = DEFAULT_FORMATS

    # server and logs
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_api_keys(cls, value: Any) -> Any:
        return parse_api_keys(value)

    @field_validator("batch_sizes", "image_formats", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
        return value

    @field_validator("batch_sizes")
    @classmethod
    def _sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(v < 1 for v in value):
            raise ValueError("batch_sizes must be positive integers, e.g. 1,8,32")
        return tuple(sorted(set(value)))

    @field_validator("image_formats")
    @classmethod
    def _formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from PIL import Image

        Image.init()
        known = set(Image.OPEN)
        formats = tuple(v.upper() for v in value)
        unknown = [f for f in formats if f not in known]
        if unknown or not formats:
            names = ", ".join(sorted(known))
            raise ValueError(f"image_formats: {unknown or 'empty'} not among Pillow's formats ({names})")
        return formats

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = getattr(init_settings, "init_kwargs", {}).get("config") or os.environ.get("CLIPMC_CONFIG")
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings, env_settings)
        if path:
            sources += (_file_source(settings_cls, Path(path)),)
        return sources

    # -- derived values ---------------------------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def thumbnails_path(self) -> Path:
        return self.thumbnails_dir if self.thumbnails_dir is not None else self.gallery / "thumbs"


def _file_source(settings_cls: type[BaseSettings], path: Path) -> PydanticBaseSettingsSource:
    if not path.is_file():
        raise SettingsFileError(f"config file {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            return TomlConfigSettingsSource(settings_cls, toml_file=path)
        if suffix == ".json":
            return JsonConfigSettingsSource(settings_cls, json_file=path)
    except (ValueError, OSError) as exc:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise SettingsFileError(f"config file {path}: {exc}") from None
    raise SettingsFileError(f"config file {path}: expected a .toml or .json file")


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and config file, with ``overrides`` (CLI flags) on top.

    ``None`` overrides are dropped, so an unset CLI flag leaves the lower layers alone.
    """
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'; what an unauthenticated service may bind."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
