"""The service's routes in three routers (DESIGN.md section 8): search, gallery, operations.

Each router declares what it needs as dependencies (auth scope from :mod:`clipmc.service.auth`,
state and readiness from :mod:`clipmc.service.state`); ``create_app`` includes all three.
"""

from clipmc.service.routers.gallery import router as gallery_router
from clipmc.service.routers.operations import router as operations_router
from clipmc.service.routers.query import router as query_router

__all__ = ["gallery_router", "operations_router", "query_router"]
