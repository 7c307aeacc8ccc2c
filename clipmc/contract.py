"""The few facts every package shares, with no heavy import (no numpy, torch, FastAPI or FAISS).

Why one module: the modality codes, the top-k bound and the image suffixes used to be defined three
times with differing spellings, and seven places wrote files "atomically" in five different ways (some
without fsync, some leaving temporary files behind on failure). Everything here is the single
definition; `model`, `export`, `gallery` and `service` import it and nothing else at the top level.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: DESIGN.md section 2: the modality codes carried by every vector, request and file.
VISIBLE = 0
INFRARED = 1
#: code -> canonical name (what responses and files say).
MODALITY_NAMES: dict[int, str] = {VISIBLE: "visible", INFRARED: "infrared"}
#: every spelling accepted on input (case-insensitive) -> code. One table for every package.
MODALITY_ALIASES: dict[str, int] = {
    "visible": VISIBLE,
    "rgb": VISIBLE,
    "vis": VISIBLE,
    "0": VISIBLE,
    "infrared": INFRARED,
    "ir": INFRARED,
    "nir": INFRARED,
    "thermal": INFRARED,
    "1": INFRARED,
}

#: The largest top-k a search accepts (DESIGN.md section 7).
MAX_TOP_K = 1000

#: Image files the command-line tools pick up from a folder (lower-case suffixes).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ModalityError(ValueError):
    """A value that names no modality; the message lists the accepted spellings."""


def parse_modality(value: Any, field_name: str = "modality") -> int:
    """0 (visible) or 1 (infrared) from an int code or any spelling in ``MODALITY_ALIASES``.

    Booleans are refused (``True`` is not "infrared"); so are floats, which would hide a bug upstream.

    Raises:
        ModalityError: the value names no modality.
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise ModalityError(_modality_message(field_name, value))
    if hasattr(value, "__index__") and not isinstance(value, str):  # int, numpy integer
        code = int(value.__index__())
        if code in MODALITY_NAMES:
            return code
    elif isinstance(value, str):
        code = MODALITY_ALIASES.get(value.strip().lower())
        if code is not None:
            return code
    raise ModalityError(_modality_message(field_name, value))


def modality_name(code: int) -> str:
    """The canonical name of a modality code (``0 -> "visible"``)."""
    return MODALITY_NAMES[parse_modality(code)]


def _modality_message(field_name: str, value: Any) -> str:
    names = ", ".join(sorted(MODALITY_ALIASES))
    return f"{field_name} must be 0/'visible' or 1/'infrared' (accepted: {names}), got {value!r}"


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new file inside ``path`` durable (a no-op where folders cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike,
    data: bytes | str | Callable[[Path], Any],
    *,
    mode: int = 0o644,
) -> Path:
    """Write ``path`` so that readers see the old file or the new one, never a part, even after a crash.

    The content goes to a temporary file in the same folder (``data`` as bytes or text, or a callable
    that writes the file at the path it is given, for libraries that save by name), which is fsync'd,
    given ``mode`` (mkstemp makes 0600, and a service may run as another user) and renamed over
    ``path``; then the folder is fsync'd so the rename itself survives power loss. On any failure the
    temporary file is removed and the old ``path`` is left as it was.

    Returns:
        ``path`` as a Path.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        if callable(data):
            os.close(fd)
            fd = -1
            data(tmp)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            with os.fdopen(fd, "wb") as f:
                fd = -1
                f.write(payload)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read in 1 MiB chunks (weights, ONNX graphs and engines are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
