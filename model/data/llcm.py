"""LLCM reader: ``idx/train_vis.txt``, ``idx/train_nir.txt``, ``idx/test_id.txt``,
``test_vis/cam1..cam9/<4-digit id>/...`` and ``test_nir/cam*/<4-digit id>/...``.

Evaluation follows ../shared/PROTOCOLS.md: queries are every image of the query modality; the gallery is
one image per (identity, camera) of the other modality drawn as for SYSU with seeds 0..9. VIS->IR uses
visible queries against a sampled NIR gallery by default; ``vis2ir="transposed"`` evaluates the way the
LLCM authors' script does (the IR->VIS matrix transposed: the sampled visible images are the queries,
every NIR image the gallery), so a number can be set beside the published column. The camera lists are
the reference ones: visible cameras 1..9, NIR cameras 1, 2, 4..9 (LLCM has no NIR camera 3).
"""

from __future__ import annotations

from pathlib import Path

from clipmc.model.data.base import EvalSetting, ReIDDataset, list_identity_folders, sample_gallery
from clipmc.model.data.records import (
    INFRARED,
    VISIBLE,
    DatasetError,
    Record,
    camera_from_path,
    read_id_list,
    read_index_file,
    relabel,
    require_dir,
)

VISIBLE_CAMERAS = (1, 2, 3, 4, 5, 6, 7, 8, 9)
NIR_CAMERAS = (1, 2, 4, 5, 6, 7, 8, 9)
NUM_TRIALS = 10
VIS2IR_MODES = ("sampled", "transposed")
_CAMERA_DIRS = {
    VISIBLE: [(c, f"test_vis/cam{c}") for c in VISIBLE_CAMERAS],
    INFRARED: [(c, f"test_nir/cam{c}") for c in NIR_CAMERAS],
}


class LLCMDataset(ReIDDataset):
    """LLCM in its original layout (or a synthetic tree in the same layout)."""

    name = "llcm"
    options = ("vis2ir",)

    def __init__(self, root: str | Path, vis2ir: str = "sampled") -> None:
        super().__init__(root)
        if vis2ir not in VIS2IR_MODES:
            raise DatasetError(f"LLCM vis2ir must be one of {list(VIS2IR_MODES)}, got {vis2ir!r}")
        self.vis2ir = vis2ir
        require_dir(self.root, "LLCM root")
        idx = require_dir(self.root / "idx", "LLCM index folder")
        require_dir(self.root / "test_vis", "LLCM visible test folder")
        require_dir(self.root / "test_nir", "LLCM near-infrared test folder")
        raw = [
            Record(p, label, camera_from_path(p), VISIBLE)
            for p, label in read_index_file(idx / "train_vis.txt", self.root)
        ]
        raw += [
            Record(p, label, camera_from_path(p), INFRARED)
            for p, label in read_index_file(idx / "train_nir.txt", self.root)
        ]
        self.train, self.label_to_pid = relabel(raw)
        self.test_ids = read_id_list(idx / "test_id.txt")
        self._queries: dict[int, list[Record]] = {}
        common = {
            "camera_rule": "a query ignores gallery entries of its own identity AND its own camera number",
            "cmc": "de-duplicated by identity; mAP and mINP on the full list",
        }
        self.settings = {
            "ir_to_visible": EvalSetting(
                "ir_to_visible", "llcm", INFRARED, VISIBLE, tuple(range(NUM_TRIALS)),
                {
                    **common,
                    "query": "every NIR test image (cameras 1, 2, 4-9)",
                    "gallery": "one visible image per (identity, camera 1-9), Python random.seed(trial), "
                    "ids sorted, sorted file lists",
                },
            ),
            "visible_to_ir": EvalSetting(
                "visible_to_ir", "llcm", VISIBLE, INFRARED, tuple(range(NUM_TRIALS)),
                {
                    **common,
                    "vis2ir": "sampled: visible queries against a sampled NIR gallery (PROTOCOLS.md)",
                    "query": "every visible test image (cameras 1-9)",
                    "gallery": "one NIR image per (identity, camera 1, 2, 4-9), Python random.seed(trial), "
                    "ids sorted, sorted file lists (not the transposed IR->VIS matrix)",
                }
                if vis2ir == "sampled"
                else {
                    **common,
                    "vis2ir": "transposed: the IR->VIS matrix transposed, as the LLCM authors' script "
                    "evaluates (raises R1, lowers mAP against the sampled way)",
                    "query": "one visible image per (identity, camera 1-9), Python random.seed(trial), ids "
                    "sorted, sorted file lists (the IR->VIS gallery)",
                    "gallery": "every NIR test image (cameras 1, 2, 4-9)",
                },
            ),
        }  # fmt: skip

    def query(self, modality: int) -> list[Record]:
        """Every test image of one modality (computed once per modality)."""
        if modality not in self._queries:
            where = f"LLCM query at {self.root}"
            self._queries[modality] = list_identity_folders(
                self.root, self.test_ids, _CAMERA_DIRS[modality], modality, where
            )
        return self._queries[modality]

    def gallery(self, modality: int, trial: int) -> list[Record]:
        where = f"LLCM gallery at {self.root}"
        return sample_gallery(self.root, self.test_ids, _CAMERA_DIRS[modality], modality, trial, where)

    def _query_gallery(self, spec: EvalSetting, trial: int) -> tuple[list[Record], list[Record]]:
        if spec.name == "visible_to_ir" and self.vis2ir == "transposed":
            # The IR->VIS trial's gallery as queries and its queries as gallery: rows of distmat.T.
            return self.gallery(VISIBLE, trial), list(self.query(INFRARED))
        return list(self.query(spec.query_modality)), self.gallery(spec.gallery_modality, trial)
