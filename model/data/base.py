"""The dataset interface shared by the SYSU-MM01, RegDB and LLCM readers.

A dataset gives relabelled training records and, per evaluation setting (e.g. SYSU "all") and trial
(a gallery draw, or the RegDB split), the query and gallery records, exactly as
../shared/PROTOCOLS.md describes them.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clipmc.model.data.records import DatasetError, Record, sorted_listing

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True, eq=False)
class EvalSetting:
    """One evaluation setting of a dataset: which images are queries and gallery, and the metric rule."""

    name: str
    rule: str  # camera/CMC rule for model.evaluation.rank_metrics: "sysu" | "regdb" | "llcm"
    query_modality: int
    gallery_modality: int
    trials: tuple[int, ...]
    description: dict[str, str] = field(default_factory=dict)


class ReIDDataset(ABC):
    """Base class: ``train`` records (pid = class label 0..C-1), ``settings``, ``query_gallery``."""

    name: str = ""
    options: tuple[str, ...] = ()

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.train: list[Record] = []
        self.label_to_pid: list[int] = []
        self.settings: dict[str, EvalSetting] = {}

    @property
    def num_classes(self) -> int:
        return len(self.label_to_pid)

    def setting(self, name: str) -> EvalSetting:
        try:
            return self.settings[name]
        except KeyError:
            raise DatasetError(
                f"{self.name}: unknown evaluation setting {name!r}; expected one of {sorted(self.settings)}"
            ) from None

    def query_gallery(self, setting: str, trial: int) -> tuple[list[Record], list[Record]]:
        """Query and gallery records of one setting and trial (pid = the dataset's identity)."""
        spec = self.setting(setting)
        if not isinstance(trial, int) or isinstance(trial, bool) or trial < 0:
            raise DatasetError(f"{self.name}: trial must be a non-negative integer, got {trial!r}")
        return self._query_gallery(spec, trial)

    @abstractmethod
    def _query_gallery(self, spec: EvalSetting, trial: int) -> tuple[list[Record], list[Record]]: ...

    def summary(self) -> str:
        n_vis = sum(1 for r in self.train if r.modality == 0)
        return (
            f"{self.name} at {self.root}: {self.num_classes} training identities, "
            f"{n_vis} visible + {len(self.train) - n_vis} infrared training images; "
            f"settings {', '.join(self.settings)}"
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.summary()}>"


def check_image_paths(paths: Sequence[str], where: str) -> None:
    """Fail clearly on a stray non-image entry that the reference listing would have picked up."""
    for path in paths:
        if not path.lower().endswith(IMAGE_EXTENSIONS):
            raise DatasetError(
                f"{where}: {path} is not an image file; the reference protocol lists every entry of an "
                "identity folder, so remove stray files from the dataset folders"
            )


def id_folder_name(pid: int) -> str:
    return f"{pid:04d}"


def _identity_folders(
    root: Path, ids: Sequence[int], camera_dirs: Sequence[tuple[int, str]]
) -> Iterator[tuple[int, int, Path, list[str]]]:
    """(pid, camid, folder, sorted listing) of each existing ``<root>/<camera dir>/<4-digit id>/``, in the
    reference order: ids sorted as 4-digit strings, then cameras in the given order."""
    for name in sorted(id_folder_name(i) for i in ids):
        for camid, cam_dir in camera_dirs:
            folder = root / cam_dir / name
            if folder.is_dir():
                yield int(name), camid, folder, sorted_listing(folder)


def list_identity_folders(
    root: Path, ids: Sequence[int], camera_dirs: Sequence[tuple[int, str]], modality: int, where: str
) -> list[Record]:
    """Every image of ``ids`` under ``<root>/<camera dir>/<4-digit id>/``: ids sorted as 4-digit strings,
    then cameras in the given order, then sorted file names (the reference query/training order)."""
    records: list[Record] = []
    for pid, camid, _folder, files in _identity_folders(root, ids, camera_dirs):
        check_image_paths(files, where)
        records.extend(Record(path, pid, camid, modality) for path in files)
    return records


def sample_gallery(
    root: Path, ids: Sequence[int], camera_dirs: Sequence[tuple[int, str]], modality: int, trial: int, where: str
) -> list[Record]:
    """One image per (identity, camera) drawn as the reference ``process_gallery_sysu`` does.

    ``random.seed(trial)``; ids in sorted 4-digit-string order; cameras in the given order; one
    ``random.choice`` over each existing folder's sorted listing; missing folders skipped (no draw).
    A private ``random.Random(trial)`` gives the same draws without touching the global generator.
    """
    rng = random.Random(trial)
    records: list[Record] = []
    for pid, camid, folder, files in _identity_folders(root, ids, camera_dirs):
        if not files:
            raise DatasetError(f"{where}: folder {folder} is empty")
        path = rng.choice(files)
        check_image_paths([path], where)
        records.append(Record(path, pid, camid, modality))
    return records
