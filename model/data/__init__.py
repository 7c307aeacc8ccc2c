"""Datasets: SYSU-MM01, RegDB and LLCM readers in their real on-disk layouts (no torch here).

``load_dataset(name, root, **kw)`` is the one entry point; see ../shared/PROTOCOLS.md for the rules the
readers implement.
"""

from __future__ import annotations

from pathlib import Path

from clipmc.model.data.base import EvalSetting, ReIDDataset
from clipmc.model.data.llcm import LLCMDataset
from clipmc.model.data.records import INFRARED, VISIBLE, DatasetError, Record
from clipmc.model.data.regdb import RegDBDataset
from clipmc.model.data.sysu import SYSUDataset

DATASETS: dict[str, type[ReIDDataset]] = {"sysu": SYSUDataset, "regdb": RegDBDataset, "llcm": LLCMDataset}

__all__ = [
    "DATASETS",
    "INFRARED",
    "VISIBLE",
    "DatasetError",
    "EvalSetting",
    "LLCMDataset",
    "ReIDDataset",
    "Record",
    "RegDBDataset",
    "SYSUDataset",
    "detect_layout",
    "load_dataset",
]


def detect_layout(folder: str | Path) -> str:
    """Which of the three layouts a folder is in, from its index files."""
    folder = Path(folder)
    if (folder / "exp" / "test_id.txt").is_file():
        return "sysu"
    if (folder / "idx" / "test_id.txt").is_file():
        return "llcm"
    if any((folder / "idx").glob("test_visible_*.txt")):
        return "regdb"
    raise DatasetError(
        f"{folder}: not a known dataset layout (looked for exp/test_id.txt (SYSU-MM01), "
        "idx/test_id.txt (LLCM), idx/test_visible_<split>.txt (RegDB))"
    )


def load_dataset(name: str | Path, root: str | Path | None = None, **kw: object) -> ReIDDataset:
    """Open a dataset.

    ``name`` is "sysu", "regdb" or "llcm" with ``root`` its folder, or ``name`` is itself a folder in one of
    those layouts (detected from its index files; a SYSU-layout tree is the common case). Options:
    RegDB takes ``split`` (1..10, default 1).
    """
    key = str(name).lower()
    if key in DATASETS:
        if root is None:
            raise DatasetError(f"dataset {key!r} needs its root folder")
        cls = DATASETS[key]
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise DatasetError(
                f"unknown dataset {str(name)!r}: expected one of {sorted(DATASETS)} with a root folder, "
                "or an existing dataset folder"
            )
        if root is not None and Path(root) != folder:
            raise DatasetError(f"give either a dataset name and root, or a folder, not both ({name}, {root})")
        cls, root = DATASETS[detect_layout(folder)], folder
    unknown = sorted(set(kw) - set(cls.options))
    if unknown:
        allowed = ", ".join(cls.options) or "none"
        raise DatasetError(f"{cls.name} does not take option(s) {unknown} (allowed: {allowed})")
    return cls(root, **kw)  # type: ignore[arg-type]
