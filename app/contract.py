"""The panel contract's vocabulary (CONTRACT.md): error strings, status strings, service types.

Shared by the gateway's own endpoint, the upstream client and the simulator, so that every
place speaks exactly the same words.
"""

import re

# Error strings clients match on.
INVALID_KEY = "Invalid API key"
INCORRECT_REQUEST = "Incorrect request"
INCORRECT_SERVICE = "Incorrect service ID"
BAD_LINK = "Bad link"
NOT_ENOUGH_FUNDS = "Not enough funds on balance"
INCORRECT_ORDER = "Incorrect order ID"
INCORRECT_REFILL = "Incorrect refill ID"
NOT_REFILLABLE = "Order not eligible for refill"
INTERNAL_ERROR = "Internal error"
RATE_LIMITED = "Too many requests"
BODY_TOO_LARGE = "Request body too large"
TEMPORARILY_UNAVAILABLE = "Service temporarily unavailable, try again later"
DRIPFEED_NOT_SUPPORTED = "Drip-feed is not supported by this service"


def quantity_too_low(minimum: int) -> str:
    return f"Quantity less than minimal {minimum}"


def quantity_too_high(maximum: int) -> str:
    return f"Quantity more than maximum {maximum}"


def missing_parameter(name: str) -> str:
    return f"Missing parameter: {name}"


class ContractError(Exception):
    """A business error: answered as HTTP 200 {"error": message}, never as a stack trace."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Order statuses, exactly as served.
PENDING = "Pending"
IN_PROGRESS = "In progress"
PROCESSING = "Processing"
COMPLETED = "Completed"
PARTIAL = "Partial"
CANCELED = "Canceled"
ACTIVE = "Active"
PAUSED = "Paused"
EXPIRED = "Expired"
REJECTED = "Rejected"  # refill status only

ORDER_STATUSES = (
    PENDING,
    IN_PROGRESS,
    PROCESSING,
    COMPLETED,
    PARTIAL,
    CANCELED,
    ACTIVE,
    PAUSED,
    EXPIRED,
)
FINAL_STATUSES = frozenset({COMPLETED, PARTIAL, CANCELED, EXPIRED})
REFILL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, REJECTED)

# Two vocabularies (CONTRACT.md): an order's words are not a refill's. `Rejected` is a refill
# status only; an order said to be `Rejected` is an unknown order status (shown In progress).
_IN_PROGRESS_SPELLINGS = ("inprogress", "in progress", "in_progress")
_ORDER_ALIASES = {
    "pending": PENDING,
    **dict.fromkeys(_IN_PROGRESS_SPELLINGS, IN_PROGRESS),
    "processing": PROCESSING,
    "completed": COMPLETED,
    "complete": COMPLETED,
    "partial": PARTIAL,
    "canceled": CANCELED,
    "cancelled": CANCELED,
    "refunded": CANCELED,
    "active": ACTIVE,
    "paused": PAUSED,
    "expired": EXPIRED,
}
_REFILL_ALIASES = {
    "pending": PENDING,
    **dict.fromkeys((*_IN_PROGRESS_SPELLINGS, "processing"), IN_PROGRESS),
    "completed": COMPLETED,
    "complete": COMPLETED,
    "rejected": REJECTED,
}


def _normalized(raw: object, aliases: dict[str, str]) -> str | None:
    if not isinstance(raw, str):
        return None
    return aliases.get(re.sub(r"\s+", " ", raw.strip().lower()))


def normalize_order_status(raw: object) -> str | None:
    """An upstream order status in any case or spelling → ORDER_STATUSES; None when unknown."""
    return _normalized(raw, _ORDER_ALIASES)


def normalize_refill_status(raw: object) -> str | None:
    """An upstream refill status in any case or spelling → REFILL_STATUSES; None when unknown."""
    return _normalized(raw, _REFILL_ALIASES)


# Service types: canonical (standard dialect) names. SmartPanel writes them lowercase with "_".
SERVICE_TYPES = (
    "Default",
    "Package",
    "Custom Comments",
    "Custom Comments Package",
    "Mentions",
    "Mentions with Hashtags",
    "Mentions Custom List",
    "Mentions Hashtag",
    "Mentions User Followers",
    "Mentions Media Likers",
    "Comment Likes",
    "Comment Replies",
    "Poll",
    "Invites from Groups",
    "SEO",
    "Subscriptions",
)
_TYPE_BY_KEY = {t.lower().replace(" ", "_"): t for t in SERVICE_TYPES}


def smartpanel_type(service_type: str) -> str:
    return service_type.lower().replace(" ", "_")


def canonical_type(raw: object) -> str | None:
    """'default', 'Custom Comments', 'custom_comments', 'CUSTOM COMMENTS' → canonical; else None."""
    if not isinstance(raw, str):
        return None
    return _TYPE_BY_KEY.get(re.sub(r"[\s_]+", "_", raw.strip().lower()))


# Types charged their flat rate per order rather than per 1000 units.
PACKAGE_TYPES = frozenset({"Package", "Custom Comments Package"})

# How a Partial settles (DESIGN.md "Status and settlement"), fixed on the order at intent:
# by the upstream's `remains`, or by the upstream's own charge ratio where it reports none.
SETTLE_BY_REMAINS = "remains"
SETTLE_BY_CHARGE_RATIO = "charge_ratio"


def settle_by(service_type: str) -> str:
    flat = service_type in PACKAGE_TYPES or service_type == "Subscriptions"
    return SETTLE_BY_CHARGE_RATIO if flat else SETTLE_BY_REMAINS
