"""The overview: the business at a glance."""

from fastapi import APIRouter, Request, Response

from app.dashboard.auth import DashboardRoute
from app.dashboard.render import page

router = APIRouter(prefix="/dashboard", route_class=DashboardRoute)


@router.get("")
async def overview(request: Request) -> Response:
    return page(request, "overview.html")
