"""RegDB reader: ``Visible/``, ``Thermal/`` and ``idx/{train,test}_{visible,thermal}_{split}.txt``.

Each of the 10 splits is its own train/test partition (one model per split). Evaluation follows
../shared/PROTOCOLS.md: visible->thermal uses every visible test image as a query and every thermal
test image as the gallery; thermal->visible swaps them; no camera rule, standard CMC.
"""

from __future__ import annotations

from pathlib import Path

from clipmc.model.data.base import EvalSetting, ReIDDataset
from clipmc.model.data.records import (
    INFRARED,
    VISIBLE,
    DatasetError,
    Record,
    read_index_file,
    relabel,
    require_dir,
)

SPLITS = tuple(range(1, 11))
# The reference evaluation gives every visible image camera 1 and every thermal image camera 2.
VISIBLE_CAMID = 1
THERMAL_CAMID = 2


class RegDBDataset(ReIDDataset):
    """One RegDB split: its training records and its two evaluation directions."""

    name = "regdb"
    options = ("split",)

    def __init__(self, root: str | Path, split: int = 1) -> None:
        super().__init__(root)
        if not isinstance(split, int) or isinstance(split, bool) or split not in SPLITS:
            raise DatasetError(f"RegDB split must be an integer 1..10, got {split!r}")
        self.split = split
        require_dir(self.root, "RegDB root")
        require_dir(self.root / "Visible", "RegDB visible image folder")
        require_dir(self.root / "Thermal", "RegDB thermal image folder")
        idx = require_dir(self.root / "idx", "RegDB index folder")
        raw = self._read(idx / f"train_visible_{split}.txt", VISIBLE)
        raw += self._read(idx / f"train_thermal_{split}.txt", INFRARED)
        self.train, self.label_to_pid = relabel(raw)
        self.test_visible = self._read(idx / f"test_visible_{split}.txt", VISIBLE)
        self.test_thermal = self._read(idx / f"test_thermal_{split}.txt", INFRARED)
        common = {
            "camera_rule": "none",
            "cmc": "standard (not de-duplicated)",
            "trials": f"split {split} (each of the 10 RegDB splits has its own model; average them)",
            "gallery": "all test images of the gallery modality (no sampling)",
        }
        self.settings = {
            "visible_to_thermal": EvalSetting(
                "visible_to_thermal", "regdb", VISIBLE, INFRARED, (split,),
                {**common, "query": "every visible test image", "gallery_modality": "thermal"},
            ),
            "thermal_to_visible": EvalSetting(
                "thermal_to_visible", "regdb", INFRARED, VISIBLE, (split,),
                {**common, "query": "every thermal test image", "gallery_modality": "visible"},
            ),
        }  # fmt: skip

    def _read(self, path: Path, modality: int) -> list[Record]:
        camid = VISIBLE_CAMID if modality == VISIBLE else THERMAL_CAMID
        return [Record(p, label, camid, modality) for p, label in read_index_file(path, self.root)]

    def _query_gallery(self, spec: EvalSetting, trial: int) -> tuple[list[Record], list[Record]]:
        if trial != self.split:
            raise DatasetError(
                f"RegDB split {self.split} is loaded, trial {trial} asked; "
                f"load it with load_dataset('regdb', root, split={trial})"
            )
        if spec.query_modality == VISIBLE:
            return list(self.test_visible), list(self.test_thermal)
        return list(self.test_thermal), list(self.test_visible)
