"""SYSU-MM01 reader: ``cam1..cam6/<4-digit id>/<file>`` and ``exp/{train,val,test}_id.txt``.

Training uses the train + val identities (395 classes on the real set) when the last epoch is kept, and the
train identities only when `best/` is selected on the val identities (model.data.selection); evaluation follows
../shared/PROTOCOLS.md: queries are every cam3 and cam6 image of the test ids (the same in every trial
and in both modes), the gallery is one image per (identity, visible camera) drawn with
``random.seed(trial)`` over cameras [1, 2, 4, 5] (all-search) or [1, 2] (indoor-search).
"""

from __future__ import annotations

from pathlib import Path

from clipmc.model.data.base import EvalSetting, ReIDDataset, list_identity_folders, sample_gallery
from clipmc.model.data.records import INFRARED, VISIBLE, DatasetError, Record, read_id_list, relabel, require_dir

VISIBLE_CAMERAS = (1, 2, 4, 5)
INFRARED_CAMERAS = (3, 6)
GALLERY_CAMERAS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
NUM_TRIALS = 10


def _cams(numbers: tuple[int, ...]) -> list[tuple[int, str]]:
    return [(n, f"cam{n}") for n in numbers]


class SYSUDataset(ReIDDataset):
    """SYSU-MM01 in its original folder layout (or a synthetic tree in the same layout)."""

    name = "sysu"

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        require_dir(self.root, "SYSU-MM01 root")
        for cam in (*VISIBLE_CAMERAS, *INFRARED_CAMERAS):
            require_dir(self.root / f"cam{cam}", "SYSU-MM01 camera folder")
        exp = require_dir(self.root / "exp", "SYSU-MM01 split folder")
        train_ids = read_id_list(exp / "train_id.txt")
        val_ids = read_id_list(exp / "val_id.txt")
        self.train_ids, self.val_ids = train_ids, val_ids
        self.test_ids = read_id_list(exp / "test_id.txt")
        trainval = train_ids + val_ids
        if len(set(trainval)) != len(trainval):
            raise DatasetError(f"{exp}: train_id.txt and val_id.txt share identities")
        overlap = set(trainval) & set(self.test_ids)
        if overlap:
            raise DatasetError(
                f"{exp / 'test_id.txt'}: {len(overlap)} test identities also in train/val, e.g. {min(overlap)}"
            )
        where = f"SYSU-MM01 at {self.root}"
        raw = list_identity_folders(self.root, trainval, _cams(VISIBLE_CAMERAS), VISIBLE, where)
        raw += list_identity_folders(self.root, trainval, _cams(INFRARED_CAMERAS), INFRARED, where)
        if not raw:
            raise DatasetError(f"{where}: no training images found for the train/val identities")
        self.train, self.label_to_pid = relabel(raw)
        self._query: list[Record] | None = None
        for mode, cams in GALLERY_CAMERAS.items():
            self.settings[mode] = EvalSetting(
                name=mode,
                rule="sysu",
                query_modality=INFRARED,
                gallery_modality=VISIBLE,
                trials=tuple(range(NUM_TRIALS)),
                description={
                    "search": f"{mode}-search, single-shot",
                    "query": "every cam3 and cam6 image of the test identities (the same in every trial)",
                    "gallery": (
                        f"one image per (identity, visible camera), cameras {list(cams)}, "
                        "drawn with Python random.seed(trial), ids sorted, sorted file lists "
                        "(process_gallery_sysu)"
                    ),
                    "camera_rule": "a cam3 query ignores every cam2 gallery entry",
                    "cmc": "de-duplicated by identity; mAP and mINP on the full list",
                },
            )

    def query(self) -> list[Record]:
        """Every cam3 and cam6 image of the test identities (computed once)."""
        if self._query is None:
            where = f"SYSU-MM01 query at {self.root}"
            self._query = list_identity_folders(self.root, self.test_ids, _cams(INFRARED_CAMERAS), INFRARED, where)
        return self._query

    def gallery(self, mode: str, trial: int) -> list[Record]:
        cams = GALLERY_CAMERAS[self.setting(mode).name]
        where = f"SYSU-MM01 gallery at {self.root}"
        return sample_gallery(self.root, self.test_ids, _cams(cams), VISIBLE, trial, where)

    def _query_gallery(self, spec: EvalSetting, trial: int) -> tuple[list[Record], list[Record]]:
        return list(self.query()), self.gallery(spec.name, trial)
