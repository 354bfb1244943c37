"""The contract's reply shapes, in both dialects (CONTRACT.md, "Two dialects").

The one module that knows how a reply looks; the dialect changes nothing else.
"""

from typing import Any

from app.catalog import PricedService
from app.contract import COMPLETED, smartpanel_type
from app.money import render
from app.orders.queries import OrderStatusView
from app.parsing import whole_number

ID_ECHO_DIGITS = 19  # up to a BIGINT; longer numerals are echoed as the text they were

STANDARD = "standard"
SMARTPANEL = "smartpanel"
DIALECTS = (STANDARD, SMARTPANEL)


def error(message: str) -> dict[str, str]:
    return {"error": message}


def amount(micros: int, dialect: str) -> str:
    """Rates and balances: at least 2 decimals, 4 in the smartpanel dialect."""
    return render(micros, 4 if dialect == SMARTPANEL else 2)


def charge(micros: int) -> str:
    return render(micros, 4)


def service(svc: PricedService, dialect: str) -> dict[str, Any]:
    if dialect == SMARTPANEL:
        item: dict[str, Any] = {
            "service": str(svc.id),
            "name": svc.name,
            "type": smartpanel_type(svc.type),
            "category": svc.category,
            "rate": amount(svc.rate, dialect),
            "min": str(svc.min),
            "max": str(svc.max),
            "dripfeed": "1" if svc.dripfeed else "0",
        }
    else:
        item = {
            "service": svc.id,
            "name": svc.name,
            "type": svc.type,
            "category": svc.category,
            "rate": amount(svc.rate, dialect),
            "min": str(svc.min),
            "max": str(svc.max),
            "refill": svc.refill,
            "cancel": svc.cancel,
            "dripfeed": svc.dripfeed,
        }
    if svc.description:
        item["desc"] = svc.description
    return item


def services(catalog: list[PricedService], dialect: str) -> list[dict[str, Any]]:
    return [service(svc, dialect) for svc in catalog]


def balance(micros: int, currency: str, dialect: str) -> dict[str, str]:
    return {"status": "success", "balance": amount(micros, dialect), "currency": currency}


def order_status(order: OrderStatusView, currency: str) -> dict[str, str]:
    remains = order.remains
    if remains is None:  # the upstream gave no count (drip-feed parents, subscriptions)
        remains = 0 if order.status == COMPLETED else order.quantity
    return {
        "order": str(order.id),
        "charge": charge(order.current_charge),
        "start_count": str(order.start_count or 0),
        "status": order.status,
        "remains": str(max(remains, 0)),
        "currency": currency,
    }


def item_error(message: str, dialect: str) -> dict[str, str] | str:
    """A per-id error inside a multi reply: an object, or SmartPanel's plain string."""
    return message if dialect == SMARTPANEL else error(message)


def order_placed(order_id: int) -> dict[str, object]:
    return {"status": "success", "order": order_id}


def _id(raw: str) -> int | str:
    """Ids in list replies are numbers; an id that was not a number (or no id's length) is
    echoed as sent."""
    number = whole_number(raw, ID_ECHO_DIGITS)
    return raw if number is None else number


def refill_single(result: int | str) -> dict[str, str]:
    return {"refill": str(result)} if isinstance(result, int) else error(result)


def refill_many(results: dict[str, int | str]) -> list[dict[str, object]]:
    return [
        {"order": _id(raw), "refill": r if isinstance(r, int) else error(r)}
        for raw, r in results.items()
    ]


def refill_status_single(result: str | tuple[str]) -> dict[str, str]:
    return {"status": result} if isinstance(result, str) else error(result[0])


def refill_status_many(results: dict[str, str | tuple[str]]) -> list[dict[str, object]]:
    return [
        {"refill": _id(raw), "status": r if isinstance(r, str) else error(r[0])}
        for raw, r in results.items()
    ]


def cancel_many(results: dict[str, bool | str]) -> list[dict[str, object]]:
    return [
        {"order": _id(raw), "cancel": 1 if r is True else error(str(r))}
        for raw, r in results.items()
    ]
