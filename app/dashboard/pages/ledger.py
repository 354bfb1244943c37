"""The ledger: every entry, newest first (by customer, by kind), and `ledger verify`."""

from fastapi import APIRouter, Request, Response

from app import ledger
from app.admin import ops
from app.dashboard.auth import DashboardRoute
from app.dashboard.pages.common import PAGE_SIZE, db_of, page_number
from app.dashboard.queries import names
from app.dashboard.render import page

router = APIRouter(prefix="/dashboard/ledger", route_class=DashboardRoute)


@router.get("")
async def entries(
    request: Request,
    customer: str = "",
    kind: str = "",
    page_no: str = "",
    verify: str = "",
) -> Response:
    db = db_of(request)
    number = page_number(page_no)
    customer_id = await ops.customer_id_for(db, customer) if customer.strip() else None
    chosen_kind = kind if kind in ledger.KINDS else None
    # One more than a page: whether there is a next one, without counting the whole ledger.
    found = await ledger.entries(
        db,
        customer_id=customer_id,
        kind=chosen_kind,
        limit=PAGE_SIZE + 1,
        offset=(number - 1) * PAGE_SIZE,
    )
    customer_names = (await names(db)).customers
    return page(
        request,
        "ledger.html",
        entries=found[:PAGE_SIZE],
        more=len(found) > PAGE_SIZE,
        page_no=number,
        customer=customer.strip(),
        kind=chosen_kind or "",
        kinds=ledger.KINDS,
        customer_names=customer_names,
        show_customer=True,
        verified=await ops.verify(db) if verify else None,
    )
