"""Validation identities for checkpoint selection, never the test set (../shared/PROTOCOLS.md,
"Selection, re-ranking and labels").

``holdout_split(dataset, fraction, seed)`` splits a dataset's training identities into the ones trained
on and the ones `best/` is chosen on:

- SYSU-MM01: the identities of ``exp/val_id.txt`` (the fraction is not used); queries = their infrared
  (cam3, cam6) images, gallery = one visible image per (identity, camera 1, 2, 4, 5) drawn as the test
  gallery is (``random.Random(trial)``, ids sorted, sorted file lists), with the SYSU camera rule;
- RegDB: a seeded ``fraction`` of the split's training identities; thermal queries against every visible
  image of those identities (the RegDB rule);
- LLCM: a seeded ``fraction`` of the training identities; NIR queries against one visible image per
  (identity, camera), drawn as for test, with the LLCM camera rule.

Everything comes from the training records already listed: selection reads no test-identity file.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clipmc.model.data.base import EvalSetting, ReIDDataset
from clipmc.model.data.records import INFRARED, VISIBLE, DatasetError, Record, relabel

VALIDATION_SETTING = "val"


@dataclass
class SelectionSplit:
    """Training records without the held-out identities, and the validation set chosen on."""

    train: list[Record]  # relabelled 0..C-1
    label_to_pid: list[int]
    validation: ValidationSet
    description: str  # e.g. "sysu exp/val_id.txt (99 identities)"

    @property
    def num_classes(self) -> int:
        return len(self.label_to_pid)


class ValidationSet(ReIDDataset):
    """A one-setting dataset ("val") over held-out training identities, for `protocols.evaluate`."""

    def __init__(
        self,
        parent: ReIDDataset,
        records: Sequence[Record],
        rule: str,
        gallery_cameras: Sequence[int] | None,
        description: str,
        trials: Sequence[int] = (0,),
    ) -> None:
        super().__init__(parent.root)
        self.name = f"{parent.name}-val"
        self.ids = sorted({r.pid for r in records})
        self.query_records = [r for r in records if r.modality == INFRARED]
        self.visible = [r for r in records if r.modality == VISIBLE]
        self.gallery_cameras = tuple(gallery_cameras) if gallery_cameras is not None else None
        gallery = (
            "every visible image of the held-out identities"
            if self.gallery_cameras is None
            else f"one visible image per (identity, camera {list(self.gallery_cameras)}), Python random(trial), "
            "ids sorted, sorted file lists (as the test gallery)"
        )
        self.settings = {
            VALIDATION_SETTING: EvalSetting(
                VALIDATION_SETTING, rule, INFRARED, VISIBLE, tuple(trials),
                {"identities": description, "query": "every infrared image of the held-out identities",
                 "gallery": gallery, "purpose": "checkpoint selection (no test identity)"},
            )
        }  # fmt: skip
        if not self.query_records or not self.visible:
            raise DatasetError(f"{self.name}: the held-out identities ({description}) lack infrared or visible images")

    def _query_gallery(self, spec: EvalSetting, trial: int) -> tuple[list[Record], list[Record]]:
        if self.gallery_cameras is None:
            return list(self.query_records), list(self.visible)
        return list(self.query_records), draw_gallery(self.visible, self.gallery_cameras, trial)


def draw_gallery(visible: Sequence[Record], cameras: Sequence[int], trial: int) -> list[Record]:
    """One record per (identity, camera), drawn as the reference ``process_gallery_sysu``: a generator
    seeded with the trial, ids in sorted 4-digit-string order, cameras in the given order, one choice
    over each (identity, camera)'s sorted paths."""
    groups: dict[tuple[int, int], list[Record]] = defaultdict(list)
    for r in visible:
        groups[(r.pid, r.camid)].append(r)
    rng = random.Random(trial)
    out = []
    for pid in sorted({r.pid for r in visible}, key=lambda p: f"{p:04d}"):
        for cam in cameras:
            group = sorted(groups.get((pid, cam), []), key=lambda r: r.path)
            if group:
                paths = [r.path for r in group]
                out.append(group[paths.index(rng.choice(paths))])
    return out


def holdout_split(dataset: ReIDDataset, fraction: float = 0.1, seed: int = 0, trials: int = 1) -> SelectionSplit:
    """Split the training identities into trained-on and held-out (see the module docstring)."""
    records = [Record(r.path, dataset.label_to_pid[r.pid], r.camid, r.modality) for r in dataset.train]
    pids = sorted({r.pid for r in records})
    fixed = getattr(dataset, "val_ids", None)
    if fixed is not None:
        held = set(fixed)
        description = f"{dataset.name} exp/val_id.txt ({len(held)} identities)"
    else:
        if not 0 < fraction < 1:
            raise DatasetError(f"held-out share must be in (0, 1), got {fraction}")
        n = min(max(2, round(fraction * len(pids))), len(pids) - 2)
        if n < 2:
            raise DatasetError(
                f"{dataset.name}: {len(pids)} training identities are too few to hold out 2 for selection"
            )
        rng = np.random.default_rng(seed)
        held = {int(p) for p in rng.choice(pids, size=n, replace=False)}
        description = (
            f"{dataset.name}: {n} of {len(pids)} training identities held out ({fraction:.0%}, seed {seed})"
        )
    rule, cameras = VALIDATION_PROTOCOL[dataset.name]
    train, label_to_pid = relabel([r for r in records if r.pid not in held])
    if not train:
        raise DatasetError(f"{dataset.name}: no training identity left after holding out {description}")
    validation = ValidationSet(
        dataset, [r for r in records if r.pid in held], rule, cameras, description, tuple(range(trials))
    )
    return SelectionSplit(train, label_to_pid, validation, description)


# dataset name -> (camera/CMC rule, visible gallery cameras drawn one image each; None = every image)
VALIDATION_PROTOCOL: dict[str, tuple[str, tuple[int, ...] | None]] = {
    "sysu": ("sysu", (1, 2, 4, 5)),
    "regdb": ("regdb", None),
    "llcm": ("llcm", (1, 2, 3, 4, 5, 6, 7, 8, 9)),
}
