"""Ranked-list pictures: a query crop and its top gallery matches, true matches framed green, false red.

Researchers look at these before they trust a number: they show what the model confuses (clothing,
pose, camera) in a way no table does. The pictures come from exactly the distance matrix that was
scored (a ``protocols.evaluate`` hook), after the dataset's camera rule, so what is drawn is what was
counted (the SYSU and LLCM CMC also de-duplicates identities; the pictures show the full list, as mAP
counts it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from clipmc.model.data.records import MODALITY_NAMES, Record
from clipmc.model.evaluation import removed_by_camera_rule

log = logging.getLogger(__name__)

TILE = (64, 128)  # (W, H) of one crop in the picture
GREEN = (40, 170, 60)
RED = (210, 40, 40)
GREY = (90, 90, 90)


class RankedListWriter:
    """An ``on_ranked`` hook for ``protocols.evaluate``: writes one PNG per drawn query, for the first
    trial of each setting it sees.

    Args:
        out_dir: folder for the PNGs (``<setting>/q<index>_id<pid>.png``).
        num_queries: how many queries per setting, spread evenly over the query list (deterministic).
        protocol_of: setting name -> camera-rule protocol ("sysu", "regdb", "llcm").
        top: gallery entries per query.
    """

    def __init__(self, out_dir: str | Path, num_queries: int, protocol_of: dict[str, str], top: int = 10) -> None:
        if num_queries < 1:
            raise ValueError("--visualize needs at least 1 query")
        self.out_dir = Path(out_dir)
        self.num_queries = num_queries
        self.protocol_of = protocol_of
        self.top = top
        self.written: list[Path] = []
        self._done: set[str] = set()

    def __call__(
        self, setting: str, trial: int, query: Sequence[Record], gallery: Sequence[Record], distmat: np.ndarray
    ) -> None:
        if setting in self._done:
            return
        self._done.add(setting)
        protocol = self.protocol_of[setting]
        picks = np.unique(np.linspace(0, len(query) - 1, min(self.num_queries, len(query))).round().astype(int))
        g_pids = np.array([r.pid for r in gallery])
        g_cams = np.array([r.camid for r in gallery])
        folder = self.out_dir / setting
        folder.mkdir(parents=True, exist_ok=True)
        for qi in picks:
            q = query[qi]
            order = np.argsort(distmat[qi], kind="stable")
            dropped = removed_by_camera_rule(protocol, q.pid, q.camid, g_pids[order], g_cams[order])
            ranked = [gallery[j] for j in order[~dropped][: self.top]]
            path = folder / f"q{qi:05d}_id{q.pid}.png"
            draw_ranked_list(q, ranked, trial=trial).save(path, format="PNG")
            self.written.append(path)
        log.info("wrote %d ranked-list pictures for %s (trial %d) to %s", len(picks), setting, trial, folder)


def draw_ranked_list(query: Record, ranked: Sequence[Record], *, trial: int | None = None) -> Image.Image:
    """One row: the query (grey frame), then each ranked crop framed green (same identity) or red."""
    w, h = TILE
    pad, label_h = 6, 28
    width = pad + (len(ranked) + 1) * (w + pad) + pad
    canvas = Image.new("RGB", (width, h + 2 * pad + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for rank, record in enumerate([query, *ranked]):
        colour = GREY if rank == 0 else (GREEN if record.pid == query.pid else RED)
        draw.rectangle([x - 3, pad - 3, x + w + 2, pad + h + 2], outline=colour, width=3)
        canvas.paste(_thumbnail(record.path), (x, pad))
        text = "query" if rank == 0 else f"#{rank}"
        draw.text((x + 2, pad + h + 4), f"{text} id{record.pid}", fill=(0, 0, 0))
        detail = f"cam{record.camid} {MODALITY_NAMES[record.modality][:3]}"
        if rank == 0 and trial is not None:
            detail += f" t{trial}"
        draw.text((x + 2, pad + h + 15), detail, fill=GREY)
        x += w + pad
        if rank == 0:
            x += pad
    return canvas


def _thumbnail(path: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB").resize(TILE, Image.Resampling.BICUBIC)
    except OSError:
        log.warning("cannot read %s for a ranked-list picture", path)
        return Image.new("RGB", TILE, (200, 200, 200))
