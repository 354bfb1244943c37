"""Checking an `add` request against its service's type (CONTRACT.md, "`add` parameters by
service type") and working out what it costs. Pure functions: no database, no network."""

import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime

from app.catalog import PricedService
from app.contract import (
    BAD_LINK,
    DRIPFEED_NOT_SUPPORTED,
    INCORRECT_SERVICE,
    NOT_ENOUGH_FUNDS,
    PACKAGE_TYPES,
    ContractError,
    missing_parameter,
    quantity_too_high,
    quantity_too_low,
)
from app.family import ANY_MAX_LINK, UpstreamRules
from app.money import charge_for
from app.parsing import row_id, whole_number
from app.upstream import has_tag_like_text, tag_like_error

MAX_TEXT_LENGTH = 100_000
SUBSCRIPTION_DELAYS = frozenset(
    {0, 5, 10, 15, 30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 360, 420, 480, 540, 600}
)
# Beyond these a value is a typo or an attack, and would overflow the database's integers.
MAX_RUNS = 10_000
MAX_POSTS = 100_000
MAX_CHARGE = 10**15  # micro-units: a billion of the currency, more than any balance
SUBSCRIPTIONS_UNAVAILABLE = "Subscriptions are not available: this service cannot be ordered"

# type → (required text parameters besides link, quantity source)
# quantity source: "quantity" (the parameter), "lines:<param>" (count of lines), None (flat).
_RULES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "Default": ((), "quantity"),
    "Package": ((), None),
    "Custom Comments": (("comments",), "lines:comments"),
    "Custom Comments Package": (("comments",), None),
    "Mentions": (("usernames",), "quantity"),
    "Mentions with Hashtags": (("usernames", "hashtags"), "quantity"),
    "Mentions Custom List": (("usernames",), "lines:usernames"),
    "Mentions Hashtag": (("hashtag",), "quantity"),
    "Mentions User Followers": (("username",), "quantity"),
    "Mentions Media Likers": (("media",), "quantity"),
    "Comment Likes": (("username",), "quantity"),
    "Comment Replies": (("username", "comments"), "lines:comments"),
    "Poll": (("answer_number",), "quantity"),
    "Invites from Groups": (("groups",), "quantity"),
    "SEO": (("keywords",), "quantity"),
}


@dataclass(frozen=True)
class OrderRequest:
    """A valid order: what to send upstream, and what it costs the customer."""

    service_id: int
    upstream_params: dict[str, str]
    rate: int  # the customer's rate per 1000 (the flat price for package types)
    quantity: int  # units charged for (× runs for drip-feed; max × posts for subscriptions)
    charge: int
    cost: int  # the upstream's price for the same order at its catalog rate
    service_type: str  # as the catalog says at intent: how this order settles, for good


def parse_service_id(params: dict[str, str]) -> int:
    raw = params.get("service", "").strip()
    if not raw:
        raise ContractError(missing_parameter("service"))
    if (service_id := row_id(raw)) is None:
        raise ContractError(INCORRECT_SERVICE)
    return service_id


def _whole_number(
    params: dict[str, str], name: str, *, maximum: int = 10**12, positive: bool = True
) -> int:
    raw = params.get(name, "").strip()
    if not raw:
        raise ContractError(missing_parameter(name))
    if not raw.isascii() or not raw.isdigit():
        raise ContractError(f"Parameter {name} must be a positive whole number")
    number = whole_number(raw.lstrip("0") or "0", len(str(maximum)))
    if number is None or number > maximum:
        raise ContractError(f"Parameter {name} must be at most {maximum}")
    if positive and number == 0:
        raise ContractError(f"Parameter {name} must be a positive whole number")
    return number


def _text(params: dict[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value.strip():
        raise ContractError(missing_parameter(name))
    if len(value) > MAX_TEXT_LENGTH:
        raise ContractError(f"Parameter {name} is too long")
    return value


def _lines(value: str) -> list[str]:
    return [line for line in re.split(r"\r\n|\n|\r", value) if line.strip()]


def link_too_long(limit: int) -> str:
    return f"Link is too long: at most {limit} characters"


def comment_split_error(separator: str) -> str:
    return f'Comments must not contain "{separator}": the panel would split them there'


def check_link(link: str, max_length: int = ANY_MAX_LINK) -> str:
    """A link need not be a URL (panels take usernames), but it must be one clean token, and
    short enough that the upstream stores it whole (SmartPanel silently cuts at 191)."""
    if not link:
        raise ContractError(BAD_LINK)
    if any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in link):
        raise ContractError(BAD_LINK)
    if len(link) > max_length:
        raise ContractError(link_too_long(max_length))
    return link


def _check_bounds(quantity: int, service: PricedService) -> None:
    if quantity < service.min:
        raise ContractError(quantity_too_low(service.min))
    if quantity > service.max:
        raise ContractError(quantity_too_high(service.max))


def validate_add(
    params: dict[str, str], service: PricedService, rules: UpstreamRules
) -> OrderRequest:
    """Check an `add` for `service` the way `rules`' upstream checks it, and price it;
    ContractError on the first problem, before anything is charged."""
    if service.type == "Subscriptions":
        if not rules.takes_subscriptions:
            raise ContractError(SUBSCRIPTIONS_UNAVAILABLE)
        upstream, units = _subscription(params, service)
    else:
        upstream, units = _linked(params, service, rules)
    flat = service.type in PACKAGE_TYPES
    charge = service.rate if flat else charge_for(service.rate, units)
    cost = service.cost if flat else charge_for(service.cost, units)
    if charge > MAX_CHARGE:
        raise ContractError(NOT_ENOUGH_FUNDS)
    if rules.refuse_tags:
        for name, value in upstream.items():
            if has_tag_like_text(value):
                raise ContractError(tag_like_error(name))
    return OrderRequest(
        service.id,
        {"service": str(service.id), **upstream},
        service.rate,
        units,
        charge,
        cost,
        service.type,
    )


def _linked(
    params: dict[str, str], service: PricedService, rules: UpstreamRules
) -> tuple[dict[str, str], int]:
    required, quantity_from = _RULES[service.type]
    upstream = {"link": check_link(params.get("link", "").strip(), rules.max_link_length)}
    for name in required:
        upstream[name] = _text(params, name)

    if quantity_from is None:
        if rules.quantity_for_every_type:
            # Its default branch refuses a package without one; min = max = 1, normally.
            upstream["quantity"] = str(service.min)
        return upstream, 1
    if quantity_from.startswith("lines:"):
        name = quantity_from.removeprefix("lines:")
        lines = _lines(upstream[name])
        if name == "comments" and service.type == "Custom Comments":
            _check_unsplittable(lines, rules)
        # Send exactly the lines charged for: some panels count blank ones too.
        upstream[name] = "\n".join(lines)
        _check_bounds(len(lines), service)
        if rules.quantity_for_every_type and service.type != "Custom Comments":
            upstream["quantity"] = str(len(lines))
        return upstream, len(lines)

    # Zero is a quantity below the minimum, as every panel says, not a malformed one.
    quantity = _whole_number(params, "quantity", positive=False)
    upstream["quantity"] = str(quantity)
    wants_dripfeed = bool(params.get("runs", "").strip() or params.get("interval", "").strip())
    if not wants_dripfeed:
        _check_bounds(quantity, service)
        return upstream, quantity
    if service.type != "Default" or not service.dripfeed:
        raise ContractError(DRIPFEED_NOT_SUPPORTED)
    runs = _whole_number(params, "runs", maximum=MAX_RUNS)
    upstream["runs"] = str(runs)
    # 0 is a valid interval (SmartPanel lists it): runs then start one after another.
    upstream["interval"] = str(_whole_number(params, "interval", maximum=10_000, positive=False))
    _check_bounds(quantity * runs if rules.dripfeed_bounds_on_total else quantity, service)
    return upstream, quantity * runs


def _check_unsplittable(lines: list[str], rules: UpstreamRules) -> None:
    """SmartPanel joins the lines with " | " and splits on it: a comment that would not come
    back as itself would be charged and posted as something else."""
    separator = rules.comment_separator
    if separator is not None and separator.join(lines).split(separator) != lines:
        raise ContractError(comment_split_error(separator))


def _subscription(params: dict[str, str], service: PricedService) -> tuple[dict[str, str], int]:
    upstream = {"username": _text(params, "username").strip()}
    low, high = _whole_number(params, "min"), _whole_number(params, "max")
    if low > high:
        raise ContractError("Parameter min must not be more than max")
    _check_bounds(low, service)
    _check_bounds(high, service)
    upstream["min"], upstream["max"] = str(low), str(high)

    delay = params.get("delay", "").strip()
    if not delay:
        raise ContractError(missing_parameter("delay"))
    if whole_number(delay, 3) not in SUBSCRIPTION_DELAYS:
        raise ContractError(
            "Parameter delay must be one of " + ", ".join(map(str, sorted(SUBSCRIPTION_DELAYS)))
        )
    upstream["delay"] = str(whole_number(delay, 3))

    # Charged up front as the upstream charges: `max` per post for `posts` posts, one post when
    # none is given; `old_posts` (posts already published) are not charged.
    posts = 1
    if params.get("posts", "").strip():
        posts = _whole_number(params, "posts", maximum=MAX_POSTS)
        upstream["posts"] = str(posts)
    if params.get("old_posts", "").strip():
        old_posts = _whole_number(params, "old_posts", maximum=MAX_POSTS, positive=False)
        upstream["old_posts"] = str(old_posts)
    expiry = params.get("expiry", "").strip()
    if expiry:
        try:
            datetime.strptime(expiry, "%d/%m/%Y")
        except ValueError:
            raise ContractError("Parameter expiry must be a date as d/m/Y") from None
        upstream["expiry"] = expiry
    return upstream, high * posts
