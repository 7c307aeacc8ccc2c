"""What the routes share: one ``ServiceState`` per app, and the FastAPI dependencies that hand it out.

Routes never reach into ``request.app.state`` themselves: they declare ``Depends(get_state)``,
``Depends(ready_service)`` (503 ``not_ready`` until warm-up is done) or ``Depends(open_gallery_state)``
(503 until the gallery is open), so the readiness rules live in one place.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from dataclasses import dataclass, field
from typing import NamedTuple

from fastapi import Depends, Request

from clipmc.export import Embedder
from clipmc.gallery import BaseGallery
from clipmc.model.calibration import Calibration
from clipmc.service.auth import KeyRing
from clipmc.service.batching import DynamicBatcher
from clipmc.service.errors import APIError
from clipmc.service.images import ImageLimits
from clipmc.service.metrics import Metrics
from clipmc.service.search_batching import SearchBatcher
from clipmc.service.settings import Settings
from clipmc.service.thumbnails import ThumbnailStore


@dataclass
class ServiceState:
    """Everything the routes use; one per app."""

    settings: Settings
    keyring: KeyRing
    metrics: Metrics
    limits: ImageLimits
    embedder: Embedder | None = None
    gallery: BaseGallery | None = None
    calibration: Calibration | None = None  # similarity -> same-person probability, when one is loaded
    calibration_resolved: bool = False  # passed to create_app (even as None), so not looked up at start-up
    owns_embedder: bool = False  # built at start-up, so closed at shutdown (what was passed in, the caller closes)
    owns_gallery: bool = False
    batcher: DynamicBatcher | None = None
    searcher: SearchBatcher | None = None  # coalesces concurrent gallery searches
    thumbnails: ThumbnailStore | None = None
    executor: concurrent.futures.ThreadPoolExecutor | None = None
    ready: bool = False
    status: str = "starting"
    warmup_task: asyncio.Task[None] | None = field(default=None, repr=False)
    maintenance_task: asyncio.Task[None] | None = field(default=None, repr=False)


class ReadyService(NamedTuple):
    """The parts a request that embeds needs, all present once the service is ready."""

    state: ServiceState
    embedder: Embedder
    gallery: BaseGallery
    batcher: DynamicBatcher


def get_state(request: Request) -> ServiceState:
    """Dependency: the app's state."""
    return request.app.state.service


def ready_service(state: ServiceState = Depends(get_state)) -> ReadyService:
    """Dependency: the model, gallery and batcher, or 503 ``not_ready`` while starting or warming up."""
    if not state.ready or state.embedder is None or state.gallery is None or state.batcher is None:
        raise APIError(503, "not_ready", f"the service is not ready yet ({state.status})", {"Retry-After": "2"})
    return ReadyService(state, state.embedder, state.gallery, state.batcher)


def open_gallery_state(state: ServiceState = Depends(get_state)) -> BaseGallery:
    """Dependency: the gallery once it is open (reads need no warmed-up model), else 503."""
    if state.gallery is None:
        raise APIError(503, "not_ready", f"the gallery is not open yet ({state.status})", {"Retry-After": "2"})
    return state.gallery
