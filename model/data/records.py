"""Image records and the small file-format helpers shared by the dataset readers.

The readers follow the reference AGW/CAJ code (see ../shared/PROTOCOLS.md): id lists are the first line
of a text file, comma separated; index files hold "<relative path> <integer label>" lines; folders are
listed with ``os.listdir`` and sorted, because the gallery draws depend on that exact order.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Re-exported (the `X as X` form) for the dataset readers.
from clipmc.contract import INFRARED as INFRARED
from clipmc.contract import MODALITY_NAMES as MODALITY_NAMES
from clipmc.contract import VISIBLE as VISIBLE


class DatasetError(ValueError):
    """A dataset folder or index file is missing or malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    """One image: its path, identity (a class label for training records), camera number and modality."""

    path: str
    pid: int
    camid: int
    modality: int  # 0 visible, 1 infrared


def pids(records: Sequence[Record]) -> list[int]:
    return [r.pid for r in records]


def camids(records: Sequence[Record]) -> list[int]:
    return [r.camid for r in records]


def by_modality(records: Iterable[Record], modality: int) -> list[Record]:
    return [r for r in records if r.modality == modality]


def relabel(records: Sequence[Record]) -> tuple[list[Record], list[int]]:
    """Map identities to 0..C-1 in sorted order, as the reference training code does.

    Returns the relabelled records and ``label_to_pid`` (the original identity of each label).
    """
    label_to_pid = sorted({r.pid for r in records})
    pid_to_label = {pid: label for label, pid in enumerate(label_to_pid)}
    out = [Record(r.path, pid_to_label[r.pid], r.camid, r.modality) for r in records]
    return out, label_to_pid


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{what}: folder {path} does not exist")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DatasetError(f"{what}: file {path} does not exist")
    return path


def read_id_list(path: Path) -> list[int]:
    """Read an id list file: the first line holds comma-separated integer ids (SYSU exp/*.txt, LLCM)."""
    require_file(path, "identity list")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read identity list ({exc})") from exc
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DatasetError(f"{path}: empty identity list (expected comma-separated ids on the first line)")
    ids: list[int] = []
    for token in lines[0].split(","):
        try:
            value = int(token)
        except ValueError:
            raise DatasetError(
                f"{path}: malformed identity list: {token.strip()!r} is not an integer id "
                "(expected comma-separated ids on the first line)"
            ) from None
        if value < 0:
            raise DatasetError(f"{path}: negative identity {value}")
        ids.append(value)
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: duplicated identity in the list")
    return ids


_INDEX_LINE = re.compile(r"^(\S+)\s+(-?\d+)\s*$")


def read_index_file(path: Path, root: Path, check_files: bool = True) -> list[tuple[str, int]]:
    """Read "<relative path> <integer label>" lines; paths are returned joined to ``root``.

    Blank lines are skipped; any other line that does not have exactly that form is an error naming the
    file and the line number. With ``check_files`` every listed image must exist.
    """
    require_file(path, "index file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read index file ({exc})") from exc
    out: list[tuple[str, int]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _INDEX_LINE.match(line.strip())
        if match is None:
            raise DatasetError(
                f"{path} line {lineno}: expected '<relative path> <integer label>', got {line.strip()!r}"
            )
        rel, label = match.group(1), int(match.group(2))
        full = root / rel
        if check_files and not full.is_file():
            raise DatasetError(f"{path} line {lineno}: listed image {full} does not exist")
        out.append((str(full), label))
    if not out:
        raise DatasetError(f"{path}: index file lists no images")
    return out


def sorted_listing(folder: Path) -> list[str]:
    """Sorted full paths of a folder's entries, as the reference builds them before ``random.choice``.

    Every entry counts (as in the reference), so the draws match it even when a folder holds a stray file.
    """
    return sorted(os.path.join(str(folder), name) for name in os.listdir(folder))


_CAM_DIR = re.compile(r"^cam(\d+)$")
_CAM_IN_NAME = re.compile(r"_c(\d+)(?:_|s)")


def camera_from_path(path: str) -> int:
    """Best-effort camera number of an image: a ``camN`` folder, else a ``_cNN_`` file-name field, else 0."""
    parts = Path(path).parts
    for part in reversed(parts[:-1]):
        match = _CAM_DIR.match(part)
        if match:
            return int(match.group(1))
    match = _CAM_IN_NAME.search(parts[-1]) if parts else None
    return int(match.group(1)) if match else 0
