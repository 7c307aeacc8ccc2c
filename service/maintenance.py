"""Erasure and retention: removing items with their thumbnails, and the periodic maintenance pass.

Every removal (``DELETE /gallery/items/{id}``, ``POST /gallery/erase``, retention) goes through
:func:`erase_ids`: gallery first, then the thumbnails, counted in ``clipmc_erased_items_total``.
The maintenance task runs every ``maintenance_interval_s`` (``CLIPMC_MAINTENANCE_INTERVAL_S``, default
60 s): it deletes items older than ``retention_days`` (``CLIPMC_RETENTION_DAYS``) when set, then
compacts the gallery when something was removed or a snapshot failed, so a removed item's vector
leaves every file of the gallery within one interval plus the time to write one snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from clipmc.gallery import BaseGallery, EraseFilter
from clipmc.service.state import ServiceState

log = logging.getLogger("clipmc.service.maintenance")

DAY_S = 86400.0


def erase_ids(state: ServiceState, gallery: BaseGallery, ids: list[int], reason: str) -> int:
    """Remove ``ids`` from the gallery, then their thumbnails; returns how many items were removed."""
    if not ids:
        return 0
    removed = gallery.remove(ids)
    if state.thumbnails is not None:
        for item_id in ids:
            state.thumbnails.delete(item_id)
    if removed:
        state.metrics.erased.labels(reason).inc(removed)
        state.metrics.gallery_items.set(gallery.stats()["count"])
    return removed


def erase_matching(state: ServiceState, gallery: BaseGallery, criteria: EraseFilter, reason: str) -> int:
    """Remove every item matching ``criteria`` (bulk erasure, retention) with its thumbnail."""
    ids = gallery.find_ids(criteria)
    removed = erase_ids(state, gallery, ids, reason)
    if removed:
        log.info("erased %d item(s) (%s): %s", removed, reason, criteria)
    return removed


def needs_compaction(gallery: BaseGallery) -> bool:
    stats = gallery.stats()
    return bool(stats.get("removed_since_compaction")) or stats.get("snapshot_error") is not None


def run_maintenance(state: ServiceState, gallery: BaseGallery, now: float | None = None) -> dict[str, Any]:
    """One pass: retention, then compaction if anything needs it. Returns what it did."""
    out: dict[str, Any] = {"retention_erased": 0, "compacted": False}
    days = state.settings.retention_days
    if days is not None:
        cutoff = (time.time() if now is None else now) - days * DAY_S
        out["retention_erased"] = erase_matching(state, gallery, EraseFilter(older_than=cutoff), "retention")
        if out["retention_erased"]:
            log.info("retention: erased %d item(s) older than %g days", out["retention_erased"], days)
    if gallery.backend == "faiss" and needs_compaction(gallery):
        result = gallery.compact()
        out["compacted"] = bool(result.get("complete"))
        if out["compacted"]:
            state.metrics.compactions.inc()
    return out


async def maintenance_loop(state: ServiceState) -> None:
    """Run :func:`run_maintenance` every ``maintenance_interval_s`` until cancelled; failures are logged
    and counted, and the next pass tries again."""
    interval = state.settings.maintenance_interval_s
    while True:
        await asyncio.sleep(interval)
        gallery = state.gallery
        if gallery is None or gallery.read_only:
            continue
        try:
            await run_in_threadpool(run_maintenance, state, gallery)
        except asyncio.CancelledError:
            raise
        except Exception:
            state.metrics.maintenance_errors.inc()
            log.exception("maintenance pass failed (retention / compaction); retried in %g s", interval)
