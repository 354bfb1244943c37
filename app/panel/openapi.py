"""The OpenAPI document of the panel endpoint, shaped so that an integrator can work from it alone.

One URL serves every action (`key` + `action`), which FastAPI alone would document as an empty
body and an empty reply. This module describes it by hand instead:

- request bodies (form, multipart, JSON) whose schema is a `oneOf` discriminated by `action`,
  with one schema per action and, for `add`, one per service type; GET as query parameters;
- named examples for every action and service type, and for every reply in both dialects;
- every error string with when it happens, and the HTTP statuses that are not 200;
- an operation description that teaches integration, with a curl line per action.

Examples and error strings are produced by the code that produces the real replies (the render
functions, the contract's constants, the validation of `add` run on sample services), so the
docs cannot drift from the behaviour. The rest of the application (admin API, health) is
documented by FastAPI as usual and merged into the same document.
"""

import json
import re
import shlex
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app import contract
from app.catalog import PricedService
from app.contract import ContractError
from app.family import ANY_MAX_LINK, SMARTPANEL_MAX_LINK, rules_for
from app.money import MICROS
from app.orders.aftercare import NOT_CANCELABLE
from app.orders.placing import IDEMPOTENCY_KEY_TOO_LONG, IDEMPOTENCY_MISMATCH, ORDER_NOT_PLACED
from app.orders.queries import OrderStatusView
from app.orders.validation import (
    MAX_TEXT_LENGTH,
    SUBSCRIPTION_DELAYS,
    parse_service_id,
    validate_add,
)
from app.panel import render
from app.panel.actions import ACTIONS, parse_ids
from app.settings import Settings
from app.upstream import (
    ACTIVE_ORDER_FOR_LINK,
    DRIPFEED_NOT_SUPPORTED,
    INCORRECT_INTERVAL,
)

PANEL_TAG = "panel API"
PANEL_PATHS = ("/api/v2", "/api/v1")
MAIN_PATH = "/api/v2"
MAIN_OPERATION_ID = "panel_api_v2_post"
IDEMPOTENCY_KEY_MAX = 128  # app.panel.actions.add
REFILL_STATUSES = contract.REFILL_STATUSES
SUBSCRIPTION_STATUSES = (contract.ACTIVE, contract.PAUSED, contract.EXPIRED)
ORDER_STATUSES = tuple(s for s in contract.ORDER_STATUSES if s not in SUBSCRIPTION_STATUSES)

REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


# --- sample services: one per type, used by every example ------------------------------------

def _svc(
    id: int, type: str, name: str, category: str, rate: str, low: int, high: int, **flags: bool
) -> PricedService:
    micros = int(Decimal(rate) * MICROS)
    return PricedService(
        id=id,
        name=name,
        category=category,
        type=type,
        rate=micros,
        cost=micros,
        min=low,
        max=high,
        dripfeed=flags.get("dripfeed", False),
        refill=flags.get("refill", False),
        cancel=flags.get("cancel", False),
        description=None,
    )


# The docs show what a SmartPanel provider refuses (the stricter family), with tags refused;
# subscriptions, which only the standard family takes, from that family's rules.
SMARTPANEL_RULES = rules_for("smartpanel", double_decode=True)
STANDARD_RULES = rules_for("standard", double_decode=True)

SAMPLE_SERVICES: dict[str, PricedService] = {
    s.type: s
    for s in (
        _svc(5, "Default", "Instagram Followers [Real, 30 days refill]", "Instagram - Followers",
             "1.275", 100, 10000, dripfeed=True, refill=True, cancel=True),
        _svc(12, "Package", "Instagram Likes on 10 posts [package]", "Instagram - Packages",
             "4.5", 1, 1),
        _svc(21, "Custom Comments", "Instagram Custom Comments", "Instagram - Comments",
             "12", 5, 1000),
        _svc(22, "Custom Comments Package", "Instagram 10 Custom Comments [package]",
             "Instagram - Comments", "2.5", 1, 1),
        _svc(31, "Mentions", "Instagram Mentions", "Instagram - Mentions", "3", 100, 10000),
        _svc(32, "Mentions with Hashtags", "Instagram Mentions + Hashtags",
             "Instagram - Mentions", "3.5", 100, 10000),
        _svc(33, "Mentions Custom List", "Instagram Mentions [your list]",
             "Instagram - Mentions", "4", 1, 1000),
        _svc(34, "Mentions Hashtag", "Instagram Mentions [hashtag users]",
             "Instagram - Mentions", "3", 100, 10000),
        _svc(35, "Mentions User Followers", "Instagram Mentions [followers of a user]",
             "Instagram - Mentions", "3", 100, 10000),
        _svc(36, "Mentions Media Likers", "Instagram Mentions [likers of a post]",
             "Instagram - Mentions", "3", 100, 10000),
        _svc(41, "Comment Likes", "Instagram Comment Likes", "Instagram - Comments",
             "2", 20, 5000),
        _svc(42, "Comment Replies", "Instagram Comment Replies", "Instagram - Comments",
             "15", 1, 500),
        _svc(51, "Poll", "Instagram Story Poll Votes", "Instagram - Story", "1.8", 100, 20000),
        _svc(61, "Invites from Groups", "Telegram Group Members [invites]",
             "Telegram - Members", "2.2", 100, 20000),
        _svc(71, "SEO", "Website Traffic from Google [keywords]", "Website - Traffic",
             "0.9", 500, 100000),
        _svc(81, "Subscriptions", "Instagram Auto Likes [subscription]",
             "Instagram - Auto", "0.8", 100, 5000),
    )
}
assert tuple(SAMPLE_SERVICES) == contract.SERVICE_TYPES, "one sample service per type, in order"

LINK = "https://www.instagram.com/p/C4xYz12AbCd/"
PROFILE = "https://www.instagram.com/example_shop/"

# --- request parameters ------------------------------------------------------------------------

_INT = {"type": "integer", "minimum": 1}
PARAMS: dict[str, dict[str, Any]] = {
    "key": {"type": "string", "description": "Your API key.", "examples": ["YOUR_KEY"]},
    "action": {
        "type": "string",
        "enum": list(ACTIONS),
        "description": "What to do: " + ", ".join(f"`{a}`" for a in ACTIONS) + ".",
    },
    "service": {**_INT, "description": "A service id from `services`.", "examples": [5]},
    "link": {
        "type": "string",
        "maxLength": ANY_MAX_LINK,
        "description": "The page, post, profile or username to serve: one token, no spaces.",
        "examples": [LINK],
    },
    "quantity": {
        **_INT,
        "description": "How many; within the service's `min` and `max` (for drip-feed: per run).",
        "examples": [1000],
    },
    "runs": {**_INT, "description": "Drip-feed: how many runs (total = quantity × runs)."},
    "interval": {**_INT, "description": "Drip-feed: minutes between two runs."},
    "comments": {
        "type": "string",
        "maxLength": MAX_TEXT_LENGTH,
        "description": "One comment per line (`\\n` or `\\r\\n`).",
    },
    "usernames": {"type": "string", "description": "Usernames, one per line."},
    "hashtags": {"type": "string", "description": "Hashtags, one per line."},
    "hashtag": {"type": "string", "description": "One hashtag."},
    "username": {"type": "string", "description": "A username."},
    "media": {"type": "string", "description": "Link to the post whose likers to mention."},
    "answer_number": {**_INT, "description": "The poll answer to vote for (1 = first)."},
    "groups": {"type": "string", "description": "Groups to invite from, one per line."},
    "keywords": {"type": "string", "description": "Search keywords, one per line."},
    "min": {**_INT, "description": "Subscriptions: the least quantity per new post."},
    "max": {**_INT, "description": "Subscriptions: the most quantity per new post."},
    "delay": {
        "type": "integer",
        "enum": sorted(SUBSCRIPTION_DELAYS),
        "description": "Subscriptions: minutes to wait after a post before delivering.",
    },
    "posts": {
        **_INT,
        "description": "Subscriptions: how many new posts to serve (required here: the whole "
        "cost, `max` × (`posts` + `old_posts`) at the rate, is held when the order is placed).",
    },
    "old_posts": {
        "type": "integer",
        "minimum": 0,
        "description": "Subscriptions: how many existing posts to serve too.",
    },
    "expiry": {
        "type": "string",
        "pattern": r"^\d{1,2}/\d{1,2}/\d{4}$",
        "description": "Subscriptions: last day, as `d/m/Y`.",
        "examples": ["31/12/2026"],
    },
    "idempotency_key": {
        "type": "string",
        "maxLength": IDEMPOTENCY_KEY_MAX,
        "description": "Optional (or the `Idempotency-Key` header): the same key within 24 h "
        "returns the first reply instead of placing a second order.",
    },
    "order": {**_INT, "description": "One of your order ids.", "examples": [32]},
    "orders": {
        "type": "string",
        "description": "Order ids, comma-separated, at most 100 (a JSON body may send a list).",
        "examples": ["32,12,7"],
    },
    "refill": {**_INT, "description": "One of your refill ids.", "examples": [1]},
    "refills": {
        "type": "string",
        "description": "Refill ids, comma-separated, at most 100 (a JSON body may send a list).",
        "examples": ["1,3"],
    },
}

# --- one schema per action (and per service type for add) -----------------------------------


@dataclass(frozen=True)
class Variant:
    """One request shape: an action, or one service type of `add`, or a single/multi form."""

    schema: str  # component name
    action: str
    title: str
    description: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    examples: dict[str, dict[str, Any]]  # example name → parameters besides key


_ADD_QUANTITY = {
    "quantity": "`quantity`",
    "lines:comments": "the number of lines in `comments`",
    "lines:usernames": "the number of lines in `usernames`",
    None: "one package (the flat `rate` is the price of the whole order)",
}

# type → (required parameters besides `service`, optional ones, where the quantity comes from,
# the example's parameters). tests/test_docs.py checks these against app.orders.validation.
_ADD_TYPES: dict[str, tuple[tuple[str, ...], tuple[str, ...], str | None, dict[str, Any]]] = {
    "Default": (("link", "quantity"), ("runs", "interval"), "quantity",
                {"link": LINK, "quantity": 1000}),
    "Package": (("link",), (), None, {"link": LINK}),
    "Custom Comments": (("link", "comments"), (), "lines:comments",
                        {"link": LINK, "comments": "Great shot!\nLove this\nWow, amazing\n"
                         "Where is this?\nSo good"}),
    "Custom Comments Package": (("link", "comments"), (), None,
                                {"link": LINK, "comments": "Nice!\nBeautiful colours"}),
    "Mentions": (("link", "quantity", "usernames"), (), "quantity",
                 {"link": LINK, "quantity": 500, "usernames": "alice\nbob\ncarol"}),
    "Mentions with Hashtags": (("link", "quantity", "usernames", "hashtags"), (), "quantity",
                               {"link": LINK, "quantity": 500, "usernames": "alice\nbob",
                                "hashtags": "#travel\n#summer"}),
    "Mentions Custom List": (("link", "usernames"), (), "lines:usernames",
                             {"link": LINK, "usernames": "alice\nbob\ncarol"}),
    "Mentions Hashtag": (("link", "quantity", "hashtag"), (), "quantity",
                         {"link": LINK, "quantity": 500, "hashtag": "#travel"}),
    "Mentions User Followers": (("link", "quantity", "username"), (), "quantity",
                                {"link": LINK, "quantity": 500, "username": "natgeo"}),
    "Mentions Media Likers": (("link", "quantity", "media"), (), "quantity",
                              {"link": LINK, "quantity": 500,
                               "media": "https://www.instagram.com/p/C1aBcD2eFgH/"}),
    "Comment Likes": (("link", "quantity", "username"), (), "quantity",
                      {"link": LINK, "quantity": 100, "username": "comment_author"}),
    "Comment Replies": (("link", "username", "comments"), (), "lines:comments",
                        {"link": LINK, "username": "comment_author",
                         "comments": "Totally agree\nWell said"}),
    "Poll": (("link", "quantity", "answer_number"), (), "quantity",
             {"link": LINK, "quantity": 1000, "answer_number": 2}),
    "Invites from Groups": (("link", "quantity", "groups"), (), "quantity",
                            {"link": "https://t.me/example_group", "quantity": 1000,
                             "groups": "https://t.me/source_one\nhttps://t.me/source_two"}),
    "SEO": (("link", "quantity", "keywords"), (), "quantity",
            {"link": "https://example.com/", "quantity": 1000,
             "keywords": "buy shoes online\nbest running shoes"}),
    "Subscriptions": (("username", "min", "max", "delay"), ("posts", "old_posts", "expiry"),
                      "subscription", {"username": "example_shop", "min": 100, "max": 200,
                                       "delay": 30}),
}
assert tuple(_ADD_TYPES) == contract.SERVICE_TYPES


def _type_key(service_type: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", service_type.title())


def _add_variants() -> list[Variant]:
    variants = []
    for service_type, (required, optional, quantity_from, params) in _ADD_TYPES.items():
        svc = SAMPLE_SERVICES[service_type]
        if quantity_from == "subscription":
            how = (
                "Each new post of `username` gets between `min` and `max` (both within the "
                "service's bounds), after `delay` minutes. Charge: `max` × `posts` (one post "
                "when `posts` is not sent; `old_posts` are not charged) at the rate per 1000, "
                "held when the order is placed and settled by what the provider keeps; "
                "subscription statuses add `Active`, `Paused` and `Expired`. Offered only "
                "where the provider takes subscriptions (not SmartPanel panels)."
            )
        elif quantity_from is None:
            how = "Charge: the service's `rate`, once per order (a package)."
        else:
            how = (
                f"Quantity: {_ADD_QUANTITY[quantity_from]}, within the service's `min`/`max`. "
                "Charge: `rate` × quantity / 1000."
            )
            if service_type == "Default":
                how += (
                    " Drip-feed (only where the service says `dripfeed: true`): add `runs` and "
                    "`interval`; the order then delivers `quantity` every `interval` minutes, "
                    "`runs` times, and is charged for `quantity` × `runs`."
                )
        examples = {f"add.{_type_key(service_type)}": {"action": "add", "service": svc.id,
                                                         **params}}
        if service_type == "Default":
            examples["add.Default.dripfeed"] = {
                "action": "add", "service": svc.id, "link": LINK, "quantity": 200,
                "runs": 5, "interval": 30,
            }
        variants.append(
            Variant(
                schema=f"PanelAdd{_type_key(service_type)}",
                action="add",
                title=f"add: {service_type}",
                description=f"`add` for a service of type `{service_type}`. {how}",
                required=("service", *required),
                optional=(*optional, "idempotency_key"),
                examples=examples,
            )
        )
    return variants


ACTION_SCHEMA = {
    "services": "PanelServicesRequest",
    "add": "PanelAddRequest",
    "status": "PanelStatusRequest",
    "balance": "PanelBalanceRequest",
    "refill": "PanelRefillRequest",
    "refill_status": "PanelRefillStatusRequest",
    "cancel": "PanelCancelRequest",
}


def _variants() -> dict[str, list[Variant]]:
    """Every request shape, grouped by action (in ACTIONS order)."""
    one = {
        "services": [Variant(ACTION_SCHEMA["services"], "services", "services",
                             "The services you can order, with your prices.", (), (),
                             {"services": {"action": "services"}})],
        "balance": [Variant(ACTION_SCHEMA["balance"], "balance", "balance", "Your balance.", (), (),
                            {"balance": {"action": "balance"}})],
        "add": _add_variants(),
        "status": [
            Variant("PanelStatusSingle", "status", "status: one order",
                    "The status of one order.", ("order",), (),
                    {"status": {"action": "status", "order": 32}}),
            Variant("PanelStatusMulti", "status", "status: several orders",
                    "The statuses of up to 100 orders, keyed by id as sent.", ("orders",), (),
                    {"status.multi": {"action": "status", "orders": "32,12,7"}}),
        ],
        "refill": [
            Variant("PanelRefillSingle", "refill", "refill: one order",
                    "Ask for a refill of one order (services with `refill: true`).",
                    ("order",), (), {"refill": {"action": "refill", "order": 32}}),
            Variant("PanelRefillMulti", "refill", "refill: several orders",
                    "Ask for refills of up to 100 orders.", ("orders",), (),
                    {"refill.multi": {"action": "refill", "orders": "32,7"}}),
        ],
        "refill_status": [
            Variant("PanelRefillStatusSingle", "refill_status", "refill_status: one refill",
                    "The status of one refill.", ("refill",), (),
                    {"refill_status": {"action": "refill_status", "refill": 1}}),
            Variant("PanelRefillStatusMulti", "refill_status", "refill_status: several refills",
                    "The statuses of up to 100 refills.", ("refills",), (),
                    {"refill_status.multi": {"action": "refill_status", "refills": "1,3"}}),
        ],
        "cancel": [
            Variant("PanelCancelMulti", "cancel", "cancel: orders",
                    "Ask to cancel up to 100 orders (services with `cancel: true`, not yet "
                    "final). The refund follows when the order shows `Canceled` (or "
                    "`Partial`: the undelivered part).", ("orders",), (),
                    {"cancel": {"action": "cancel", "orders": "32,7"}}),
            Variant("PanelCancelSingle", "cancel", "cancel: one order",
                    "The same with one `order`; the reply is still a list.", ("order",), (),
                    {"cancel.order": {"action": "cancel", "order": 32}}),
        ],
    }
    missing = set(ACTIONS) ^ set(one)
    if missing:
        raise RuntimeError(f"panel docs and ACTIONS disagree on: {sorted(missing)}")
    return {action: one[action] for action in ACTIONS}


def _variant_schema(v: Variant) -> dict[str, Any]:
    props: dict[str, Any] = {
        "key": PARAMS["key"],
        "action": {"type": "string", "const": v.action},
    }
    for name in (*v.required, *v.optional):
        props[name] = PARAMS[name]
    return {
        "title": v.title,
        "description": v.description,
        "type": "object",
        "required": ["key", "action", *v.required],
        "properties": props,
    }




def _request_schemas(variants: dict[str, list[Variant]]) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    for action, shapes in variants.items():
        for v in shapes:
            schemas[v.schema] = _variant_schema(v)
        if len(shapes) > 1:
            what = "service type" if action == "add" else "form"
            schemas[ACTION_SCHEMA[action]] = {
                "title": action,
                "description": f"`{action}`: one shape per {what}.",
                "anyOf": [_ref(v.schema) for v in shapes],
            }
    schemas["PanelRequest"] = {
        "title": "Panel API request",
        "description": "`key` + `action` and the action's parameters; the same fields as a "
        "form, a multipart form, a JSON object or a query string.",
        "oneOf": [_ref(ACTION_SCHEMA[a]) for a in variants],
        "discriminator": {
            "propertyName": "action",
            "mapping": {a: REF + ACTION_SCHEMA[a] for a in variants},
        },
    }
    return schemas


# --- replies -----------------------------------------------------------------------------------

_AMOUNT = {"type": "string", "pattern": r"^\d+\.\d{2,6}$"}
_CHARGE = {"type": "string", "pattern": r"^\d+\.\d{4,6}$"}
_INT_STRING = {"type": "string", "pattern": r"^\d+$"}
_ID = {"type": ["integer", "string"], "description": "The id as sent (a number when numeric)."}


def _error_or(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, _ref("PanelError")]}


def _reply_schemas() -> dict[str, Any]:
    return {
        "PanelError": {
            "title": "error",
            "description": "A business error (HTTP 200), or a per-item error in a multi reply.",
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "examples": [contract.INCORRECT_ORDER]}},
        },
        "PanelService": {
            "title": "service (standard dialect)",
            "type": "object",
            "required": ["service", "name", "type", "category", "rate", "min", "max",
                         "refill", "cancel", "dripfeed"],
            "properties": {
                "service": {"type": "integer", "description": "The id to `add` with."},
                "name": {"type": "string"},
                "type": {"type": "string", "enum": list(contract.SERVICE_TYPES),
                         "description": "Decides the parameters of `add`."},
                "category": {"type": "string"},
                "rate": {**_AMOUNT, "description": "Your price per 1000 (packages: per order)."},
                "min": _INT_STRING,
                "max": _INT_STRING,
                "refill": {"type": "boolean"},
                "cancel": {"type": "boolean"},
                "dripfeed": {"type": "boolean"},
                "desc": {"type": "string"},
            },
        },
        "PanelServiceSmartPanel": {
            "title": "service (smartpanel dialect)",
            "type": "object",
            "required": ["service", "name", "type", "category", "rate", "min", "max",
                         "dripfeed"],
            "properties": {
                "service": _INT_STRING,
                "name": {"type": "string"},
                "type": {"type": "string",
                         "enum": [contract.smartpanel_type(t) for t in contract.SERVICE_TYPES]},
                "category": {"type": "string"},
                "rate": {"type": "string", "pattern": r"^\d+\.\d{4,6}$"},
                "min": _INT_STRING,
                "max": _INT_STRING,
                "dripfeed": {"type": "string", "enum": ["1", "0"]},
                "desc": {"type": "string"},
            },
        },
        "PanelServicesReply": {
            "title": "services reply",
            "type": "array",
            "items": {"anyOf": [_ref("PanelService"), _ref("PanelServiceSmartPanel")]},
        },
        "PanelAddReply": {
            "title": "add reply",
            "type": "object",
            "required": ["status", "order"],
            "properties": {
                "status": {"const": "success"},
                "order": {"type": "integer", "description": "Your new order's id."},
            },
        },
        "PanelOrderStatus": {
            "title": "status reply",
            "type": "object",
            "required": ["order", "charge", "start_count", "status", "remains", "currency"],
            "properties": {
                "order": _INT_STRING,
                "charge": {**_CHARGE, "description": "What the order costs you now (after "
                           "any refund of a partial or canceled order)."},
                "start_count": {**_INT_STRING, "description": '"0" while unknown.'},
                "status": {"type": "string", "enum": list(contract.ORDER_STATUSES)},
                "remains": {**_INT_STRING, "description": "Units not delivered (never "
                            "negative)."},
                "currency": {"type": "string"},
            },
        },
        "PanelStatusMultiReply": {
            "title": "status reply (several orders)",
            "description": "Keyed by each id as sent. A bad id maps to an error: an object "
            "(standard dialect) or the plain string (smartpanel dialect).",
            "type": "object",
            "additionalProperties": {
                "anyOf": [_ref("PanelOrderStatus"), _ref("PanelError"), {"type": "string"}]
            },
        },
        "PanelBalanceReply": {
            "title": "balance reply",
            "type": "object",
            "required": ["status", "balance", "currency"],
            "properties": {
                "status": {"const": "success"},
                "balance": _AMOUNT,
                "currency": {"type": "string"},
            },
        },
        "PanelRefillReply": {
            "title": "refill reply",
            "type": "object",
            "required": ["refill"],
            "properties": {"refill": {**_INT_STRING, "description": "The new refill's id."}},
        },
        "PanelRefillMultiReply": {
            "title": "refill reply (several orders)",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["order", "refill"],
                "properties": {"order": _ID, "refill": _error_or({"type": "integer"})},
            },
        },
        "PanelRefillStatusReply": {
            "title": "refill_status reply",
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string", "enum": list(REFILL_STATUSES)}},
        },
        "PanelRefillStatusMultiReply": {
            "title": "refill_status reply (several refills)",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["refill", "status"],
                "properties": {
                    "refill": _ID,
                    "status": _error_or({"type": "string", "enum": list(REFILL_STATUSES)}),
                },
            },
        },
        "PanelCancelReply": {
            "title": "cancel reply",
            "type": "array",
            "items": {
                "type": "object",
                "required": ["order", "cancel"],
                "properties": {"order": _ID, "cancel": _error_or({"const": 1})},
            },
        },
        "PanelReply": {
            "title": "Panel API reply",
            "description": "The reply's shape depends on the action (see the examples).",
            "anyOf": [
                _ref(name)
                for name in (
                    "PanelServicesReply", "PanelAddReply", "PanelOrderStatus",
                    "PanelStatusMultiReply", "PanelBalanceReply", "PanelRefillReply",
                    "PanelRefillMultiReply", "PanelRefillStatusReply",
                    "PanelRefillStatusMultiReply", "PanelCancelReply", "PanelError",
                )
            ],
        },
    }


@dataclass(frozen=True)
class Reply:
    name: str
    summary: str
    value: Any
    description: str = ""


def _in_progress(currency: str) -> dict[str, str]:
    view = OrderStatusView(32, contract.IN_PROGRESS, 1000, 1_275_000, 0, 3572, 157)
    return render.order_status(view, currency)


def _partial(currency: str) -> dict[str, str]:
    view = OrderStatusView(12, contract.PARTIAL, 1000, 1_275_000, 637_500, 1045, 500)
    return render.order_status(view, currency)


def _multi_status(dialect: str, currency: str) -> dict[str, Any]:
    # As app.panel.actions.status builds it: a status per known id, an item error otherwise.
    return {
        "32": _in_progress(currency),
        "12": _partial(currency),
        "7": render.item_error(contract.INCORRECT_ORDER, dialect),
    }


def _replies(currency: str) -> list[Reply]:
    std, smart = render.STANDARD, render.SMARTPANEL
    shown = [SAMPLE_SERVICES[t] for t in ("Default", "Package", "Custom Comments",
                                          "Subscriptions")]
    balance = 100_500_000
    return [
        Reply("services.standard", "services (standard dialect)",
              render.services(shown, std)),
        Reply("services.smartpanel", "services (smartpanel dialect)",
              render.services(shown, smart)),
        Reply("add", "add (both dialects)", render.order_placed(32)),
        Reply("status", "status: one order (both dialects)",
              _in_progress(currency)),
        Reply("status.multi.standard", "status: several orders (standard dialect)",
              _multi_status(std, currency)),
        Reply("status.multi.smartpanel", "status: several orders (smartpanel dialect)",
              _multi_status(smart, currency)),
        Reply("balance.standard", "balance (standard dialect)",
              render.balance(balance, currency, std)),
        Reply("balance.smartpanel", "balance (smartpanel dialect)",
              render.balance(balance, currency, smart)),
        Reply("refill", "refill: one order (both dialects)", render.refill_single(1)),
        Reply("refill.multi", "refill: several orders (both dialects)",
              render.refill_many({"32": 1, "7": contract.INCORRECT_ORDER})),
        Reply("refill_status", "refill_status: one refill (both dialects)",
              render.refill_status_single(contract.COMPLETED)),
        Reply("refill_status.multi", "refill_status: several refills (both dialects)",
              render.refill_status_many({"1": contract.COMPLETED,
                                         "3": (contract.INCORRECT_REFILL,)})),
        Reply("cancel", "cancel (both dialects)",
              render.cancel_many({"32": True, "7": contract.INCORRECT_ORDER})),
    ]


# --- errors, produced by the code that raises them -------------------------------------------


def _raised(call: Callable[[], object]) -> str:
    try:
        call()
    except ContractError as exc:
        return exc.message
    raise RuntimeError("panel docs: a documented error is no longer raised by the code")


def _add_error(service_type: str, **params: Any) -> str:
    svc = SAMPLE_SERVICES[service_type]
    strings = {k: str(v) for k, v in params.items()}
    rules = STANDARD_RULES if service_type == "Subscriptions" else SMARTPANEL_RULES
    return _raised(lambda: validate_add(strings, svc, rules))


@dataclass(frozen=True)
class ErrorDoc:
    message: str
    when: str
    actions: str


def _errors(settings: Settings) -> list[ErrorDoc]:
    default = SAMPLE_SERVICES["Default"]
    many = ",".join(["1"] * (settings.max_ids_per_call + 1))
    docs = [
        ErrorDoc(contract.INVALID_KEY, "No key, an unknown or revoked key, or a disabled "
                 "account.", "all"),
        ErrorDoc(contract.INCORRECT_REQUEST, "No `action` or an unknown one; malformed "
                 "parameters (a body that is not a form or a JSON object, a non-numeric "
                 "`service`, no `order`/`orders` where one is needed).", "all"),
        ErrorDoc(_raised(lambda: parse_service_id({})), "`add` without `service` (likewise "
                 "`Missing parameter: comments`, `…: usernames`, `…: quantity`: whatever the "
                 "service type requires).", "add"),
        ErrorDoc(contract.INCORRECT_SERVICE, "The service does not exist or is not offered to "
                 "you (hidden or disabled).", "add"),
        ErrorDoc(_add_error("Default", link=LINK, quantity="ten"), "A number that is not a "
                 "positive whole number (likewise for `runs`, `interval`, `min`, `max`, "
                 "`posts`).", "add"),
        ErrorDoc(contract.quantity_too_low(default.min), "The quantity (per run for "
                 "drip-feed; the lines of `comments`/`usernames` where they set it; `min` and "
                 "`max` of a subscription) is below the service's `min` (the number shown).",
                 "add"),
        ErrorDoc(contract.quantity_too_high(default.max), "…or above its `max` (the number "
                 "shown).", "add"),
        ErrorDoc(_add_error("Default", link="", quantity=1000), "`link` is missing, or "
                 "contains spaces or control characters.", "add"),
        ErrorDoc(_add_error("Default", link="x" * (SMARTPANEL_MAX_LINK + 1), quantity=1000),
                 f"`link` is longer than the provider stores whole ({SMARTPANEL_MAX_LINK} "
                 "characters for SmartPanel panels, the number shown).", "add"),
        ErrorDoc(_add_error("Custom Comments", link=LINK, comments="a | b\nc\nd\ne\nf"),
                 "A comment containing ` | `, on which the provider would split it into two "
                 "(charged twice, posted changed).", "add"),
        ErrorDoc(_raised(lambda: validate_add({}, SAMPLE_SERVICES["Subscriptions"],
                                              SMARTPANEL_RULES)),
                 "A subscription, where the provider takes none (such services are not "
                 "listed in `services` then). Nothing is charged.", "add"),
        ErrorDoc(_add_error("Mentions", link=LINK, quantity=500, usernames="a", runs=2,
                            interval=5),
                 "`runs`/`interval` sent for a service without drip-feed (`dripfeed: "
                 "false`, or a type other than `Default`).", "add"),
        ErrorDoc(_add_error("Subscriptions", username="u", min=300, max=200, delay=0, posts=1),
                 "Subscriptions: `min` above `max`.", "add"),
        ErrorDoc(_add_error("Subscriptions", username="u", min=100, max=200, delay=7, posts=1),
                 "Subscriptions: a `delay` not in the list.", "add"),
        ErrorDoc(_add_error("Subscriptions", username="u", min=100, max=200, delay=0, posts=1,
                            expiry="2026-12-31"), "Subscriptions: `expiry` not a `d/m/Y` date.",
                 "add"),
        ErrorDoc(_add_error("Custom Comments", link=LINK, comments="x" * (MAX_TEXT_LENGTH + 1)),
                 f"A text parameter longer than {MAX_TEXT_LENGTH} characters.", "add"),
    ]
    if settings.upstream_double_decode is not False:
        tagged = "I <3 it\nnice\ncool\nwow\nyes"
        docs.append(ErrorDoc(_add_error("Custom Comments", link=LINK, comments=tagged),
                             "Text that looks like an HTML tag (`<3`, `<b>`) cannot reach "
                             "the provider intact, so it is refused.", "add"))
    docs += [
        ErrorDoc(contract.NOT_ENOUGH_FUNDS, "Your balance is below the order's charge. "
                 "Nothing is charged.", "add"),
        ErrorDoc(IDEMPOTENCY_MISMATCH, "The idempotency key was used within 24 h for an "
                 "order with other parameters.", "add"),
        ErrorDoc(IDEMPOTENCY_KEY_TOO_LONG, "The idempotency key is longer than "
                 f"{IDEMPOTENCY_KEY_MAX} characters.", "add"),
        ErrorDoc(DRIPFEED_NOT_SUPPORTED, "The provider refused drip-feed for this service "
                 "(refunded).", "add"),
        ErrorDoc(INCORRECT_INTERVAL, "The provider refused the drip-feed `interval` "
                 "(refunded).", "add"),
        ErrorDoc(ACTIVE_ORDER_FOR_LINK, "The provider takes one active order per link for "
                 "this service (refunded).", "add"),
        ErrorDoc(ORDER_NOT_PLACED, "The provider refused the order for another reason "
                 "(refunded).", "add"),
        ErrorDoc(contract.TEMPORARILY_UNAVAILABLE, "The provider cannot be reached right "
                 "now: nothing was placed or charged; try again later.",
                 "add, refill, cancel"),
        ErrorDoc(contract.INCORRECT_ORDER, "The order id does not exist or is not yours.",
                 "status, refill, cancel"),
        ErrorDoc(contract.INCORRECT_REFILL, "The refill id does not exist or is not yours.",
                 "refill_status"),
        ErrorDoc(contract.NOT_REFILLABLE, "The order's service has no refill (`refill: "
                 "false`), or the provider refused the refill.", "refill"),
        ErrorDoc(NOT_CANCELABLE, "The order's service cannot be canceled (`cancel: false`), "
                 "the order is already final, or the provider refused.", "cancel"),
        ErrorDoc(_raised(lambda: parse_ids(many, settings.max_ids_per_call)),
                 f"More than {settings.max_ids_per_call} ids in `orders` (likewise `Too many "
                 "refill IDs…` for `refills`).", "status, refill, cancel"),
    ]
    return docs


# --- examples, curl -----------------------------------------------------------------------------

CURL_WIDTH = 90
_PLAIN = re.compile(r"[A-Za-z0-9._~:/,@#-]*")


def curl(params: dict[str, Any], *, path: str = MAIN_PATH, get: bool = False) -> str:
    """The curl line for a request: `-d` for plain values, `--data-urlencode` for the rest."""
    parts = ["curl -s"] + (["-G"] if get else [])
    for name, raw in {"key": "YOUR_KEY", **params}.items():
        value = str(raw)
        if _PLAIN.fullmatch(value):
            parts.append(f"-d {name}={value}")
        elif "\n" in value or "\r" in value:
            escaped = (f"{name}={value}".replace("\\", "\\\\").replace("'", "\\'")
                       .replace("\r", "\\r").replace("\n", "\\n"))
            parts.append(f"--data-urlencode $'{escaped}'")
        else:
            parts.append(f"--data-urlencode {shlex.quote(f'{name}={value}')}")
    parts.append(f"https://HOST{path}")
    line = " ".join(parts)
    return line if len(line) <= CURL_WIDTH else " \\\n  ".join(parts)


def _request_examples(variants: dict[str, list[Variant]]) -> dict[str, Any]:
    examples = {}
    for shapes in variants.values():
        for v in shapes:
            for name, params in v.examples.items():
                summary = "add: Default, drip-feed" if name.endswith("dripfeed") else v.title
                examples["request." + name] = {
                    "summary": summary,
                    "description": f"```\n{curl(params)}\n```",
                    "value": {"key": "YOUR_KEY", **params},
                }
    return examples


def _reply_examples(errors: list[ErrorDoc], currency: str) -> dict[str, Any]:
    examples: dict[str, Any] = {
        "reply." + r.name: {"summary": r.summary, "value": r.value} for r in _replies(currency)
    }
    for e in errors:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", e.message).strip("_")[:60]
        examples["error." + slug] = {
            "summary": f"error: {e.message}",
            "description": f"{e.when} (`{e.actions}`)",
            "value": render.error(e.message),
        }
    return examples


# --- the guide (the operation's description) -----------------------------------------------


def _md_json(value: Any) -> str:
    return f"```json\n{json.dumps(value, ensure_ascii=False, indent=2)}\n```"


def _code(value: Any) -> str:
    return f"`{_json(value)}`"


def _dialect_rows() -> list[tuple[str, str, str]]:
    svc = SAMPLE_SERVICES["Default"]
    std = render.service(svc, render.STANDARD)
    smart = render.service(svc, render.SMARTPANEL)
    std_multi = render.item_error(contract.INCORRECT_ORDER, render.STANDARD)
    smart_multi = render.item_error(contract.INCORRECT_ORDER, render.SMARTPANEL)
    bal = 100_500_000
    return [
        ("`service` in `services`", _code(std["service"]), _code(smart["service"])),
        ("`type` in `services`", _code(std["type"]), _code(smart["type"])),
        ("`dripfeed` in `services`", _code(std["dripfeed"]), _code(smart["dripfeed"])),
        ("`refill`, `cancel` in `services`", f"{_code(std['refill'])} (booleans)", "absent"),
        ("`rate`, `balance`", f"{_code(std['rate'])}, "
         f"{_code(render.amount(bal, render.STANDARD))} (at least 2 decimals)",
         f"{_code(smart['rate'])}, {_code(render.amount(bal, render.SMARTPANEL))} "
         "(at least 4 decimals)"),
        ("a bad id in `status` with `orders`", _code(std_multi), _code(smart_multi)),
    ]


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _guide(settings: Settings, variants: dict[str, list[Variant]],
           errors: list[ErrorDoc]) -> str:
    replies = {r.name: r.value for r in _replies(settings.currency)}
    shapes = {name: params for vs in variants.values() for v in vs
              for name, params in v.examples.items()}
    first_service = replies["services.standard"][:1]
    ids = settings.max_ids_per_call

    def block(title: str, example: str, reply: Any, note: str = "") -> str:
        text = f"**{title}**\n\n```\n{curl(shapes[example])}\n```\n\n{_md_json(reply)}"
        return text + (f"\n\n{note}" if note else "")

    add_rows = []
    for vs in variants["add"]:
        type_name = vs.title.removeprefix("add: ")
        optional = [p for p in vs.optional if p != "idempotency_key"]
        add_rows.append((f"`{type_name}`", ", ".join(f"`{p}`" for p in vs.required),
                         ", ".join(f"`{p}`" for p in optional) or "—"))
    burst = settings.rate_limit_burst
    if settings.rate_limit_per_second > 0 and burst > 0:
        rate = (f"Each key may make **{settings.rate_limit_per_second:g} requests per "
                f"second**, with bursts of up to {burst} at once. Beyond that the reply is "
                "HTTP `429` with a `Retry-After` header (whole seconds): wait that long, then "
                "send the request again (it was not carried out).")
    else:
        rate = ("No per-key rate limit is set right now; a client should still handle HTTP "
                "`429`: wait the `Retry-After` header's seconds, then send the request again.")

    sections = [
        "## Integrating",
        f"Every action goes through **one URL**: `POST https://HOST{MAIN_PATH}` (HOST is the "
        "address you got with your API key; `/api/v1` is the same endpoint).",
        "This is the SMM-panel **API v2** that nearly every panel serves: **any existing "
        "panel client works unchanged** (PHP curl samples, Python clients such as `smmpy` or "
        f"`babismm`, bots, other panels): give it `https://HOST{MAIN_PATH}` as the API URL "
        "and your key.",
        "### Requests",
        "- Every request carries `key` (your API key) and `action`, plus the action's own "
        "parameters.\n"
        "- Send them as a form (`application/x-www-form-urlencoded`, what `curl -d` sends), "
        "as `multipart/form-data`, as a JSON object, or as a `GET` query string. Body and "
        "query string are merged; the body wins.\n"
        "- Numbers may be numbers or strings (`100` or `\"100\"`). Unknown parameters are "
        "ignored.\n"
        "- Every reply is JSON.",
        "### Actions",
        block("services: your services and prices", "services", first_service,
              "One object per service (one shown). `rate` is your price per 1000 units (for "
              "`Package` types, per order); `min`/`max` bound the quantity; `type` decides "
              "what `add` needs (below)."),
        block("add: place an order", "add.Default", replies["add"],
              "`order` is the id to use with `status`, `refill` and `cancel`."),
        block("add with drip-feed (where the service says `dripfeed: true`)",
              "add.Default.dripfeed", replies["add"]),
        block("add for a type with a list (here Custom Comments: one comment per line)",
              "add.CustomComments", replies["add"]),
        block("status: one order", "status", replies["status"]),
        block(f"status: several orders (at most {ids})", "status.multi",
              replies["status.multi.standard"],
              "Keyed by each id as you sent it; a bad id gets its own error."),
        block("balance", "balance", replies["balance.standard"]),
        block("refill: one order", "refill", replies["refill"],
              "`refill` is the refill's id, for `refill_status`."),
        block(f"refill: several orders (at most {ids})", "refill.multi",
              replies["refill.multi"]),
        block("refill_status: one refill", "refill_status", replies["refill_status"]),
        block("refill_status: several refills", "refill_status.multi",
              replies["refill_status.multi"]),
        block("cancel (`orders`, or one `order`; the reply is always a list)", "cancel",
              replies["cancel"]),
        "### `add` parameters by service type",
        "Besides `key`, `action=add` and `service`; the service's `type` comes from "
        "`services`. Every type has its own request example below (the *Examples* list of "
        "the request body).",
        _table(("type", "required", "optional"), add_rows),
        "Quantities must be within the service's `min` and `max` (for drip-feed, each run's "
        "quantity). For `Custom Comments` and `Mentions Custom List` the quantity is the "
        "number of lines; `Package` types cost their `rate` per order.",
        "### Replies",
        "- **Errors are HTTP 200** with `{\"error\": \"…\"}`: look for an `error` field, not "
        "at the HTTP status. In replies about several ids the errors are inside the items, "
        "never at the top.\n"
        "- **Money** is a decimal string, never a float: `rate` and `balance` have at least "
        "2 decimals, `charge` at least 4 (`\"0.0360\"`); parse it with a decimal type. "
        f"Currency: `{settings.currency}`.\n"
        "- **Order ids, refill ids and charges are this gateway's own**, not the provider's. "
        "You see only your own orders: any other id is `Incorrect order ID`.\n"
        "- An `add` that returns an order id is charged at once. An order that fails later "
        "ends `Canceled` and is refunded in full.\n"
        "- **Order statuses**: " + ", ".join(f"`{s}`" for s in ORDER_STATUSES)
        + "; subscriptions also " + ", ".join(f"`{s}`" for s in SUBSCRIPTION_STATUSES)
        + ". **Refill statuses**: " + ", ".join(f"`{s}`" for s in REFILL_STATUSES) + ".\n"
        "- `start_count` and `remains` are whole-number strings; `start_count` is `\"0\"` "
        "until known. `charge` in `status` is what the order costs you now: a `Canceled` "
        "order is refunded, a `Partial` one for the part not delivered.\n"
        f"- `status` is answered from this gateway's records, refreshed about every "
        f"{settings.sync_interval_seconds:g} s: polling faster gains nothing.",
        "### Two dialects",
        "Panels come in two flavours and clients are written for one of them; this gateway "
        "answers each key in its account's dialect (here the default is "
        f"`{settings.default_dialect}`; ask your provider to switch yours). Requests are the "
        "same in both; replies differ only in:",
        _table(("reply detail", "standard (Perfect Panel family)",
                "smartpanel (SmartPanel family)"), _dialect_rows()),
        "### Errors",
        "The `error` strings are exact: clients match on them.",
        _table(("`error`", "when", "actions"),
               [(f"`{e.message}`", e.when, e.actions) for e in errors]),
        "### HTTP statuses",
        _table(("status", "when", "body"), [
            ("200", "Every reply, business errors included.", "the reply"),
            ("413", f"The body is larger than {settings.max_body_bytes} bytes.",
             f"`{_json(render.error(contract.BODY_TOO_LARGE))}`"),
            ("429", "Too many requests for your key (see *Limits*): nothing was done; "
             "wait `Retry-After` seconds, then send it again.",
             f"`{_json(render.error(contract.RATE_LIMITED))}`"),
            ("500", "A bug on our side; no detail is given.",
             f"`{_json(render.error(contract.INTERNAL_ERROR))}`"),
        ]),
        "### Retrying `add` safely: idempotency",
        "A network error after sending `add` leaves you not knowing whether the order was "
        "placed. Send an **`Idempotency-Key` header** (or an `idempotency_key` parameter), "
        f"any unique string of at most {IDEMPOTENCY_KEY_MAX} characters, with `add`: sending "
        "the same key again within **24 hours** returns the first reply (the same order id) "
        "instead of placing a second order. The same key with different parameters is an "
        f"error (`{IDEMPOTENCY_MISMATCH}`). Without a key, every `add` is a new order.",
        "```\n" + curl(shapes["add.Default"]).replace(
            "curl -s", "curl -s -H 'Idempotency-Key: 7f1c2a9e-order-1234'") + "\n```",
        "### Limits",
        f"- {rate}\n"
        f"- At most {ids} ids per `orders`/`refills`; a body of at most "
        f"{settings.max_body_bytes} bytes; `link` at most {ANY_MAX_LINK} characters "
        f"({SMARTPANEL_MAX_LINK} where the provider is a SmartPanel panel); text "
        f"parameters at most {MAX_TEXT_LENGTH} characters.",
    ]
    return "\n\n".join(sections)


# --- the document ------------------------------------------------------------------------------


def _query_parameters() -> list[dict[str, Any]]:
    used: dict[str, set[str]] = {}
    for shapes in _variants().values():
        for v in shapes:
            for p in (*v.required, *v.optional):
                used.setdefault(p, set()).add(v.action)
    params = [
        {"name": "key", "in": "query", "required": True, "schema": PARAMS["key"]},
        {"name": "action", "in": "query", "required": True, "schema": PARAMS["action"]},
    ]
    for name, actions in used.items():
        where = ", ".join(f"`{a}`" for a in ACTIONS if a in actions)
        params.append({
            "name": name,
            "in": "query",
            "required": False,
            "description": f"{PARAMS[name].get('description', '')} (used by {where})",
            "schema": {k: v for k, v in PARAMS[name].items() if k != "description"},
        })
    return params


IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "`add` only: the same key within 24 h returns the first reply instead of "
    "placing a second order (the `idempotency_key` parameter does the same).",
    "schema": {"type": "string", "maxLength": IDEMPOTENCY_KEY_MAX},
}


def _responses(reply_examples: dict[str, Any]) -> dict[str, Any]:
    def error_body(message: str, description: str,
                   headers: dict[str, Any] | None = None) -> dict[str, Any]:
        response: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {
                "schema": _ref("PanelError"),
                "example": render.error(message),
            }},
        }
        if headers:
            response["headers"] = headers
        return response

    return {
        "PanelReply": {
            "description": "Every reply, **business errors included** (`{\"error\": …}`). "
            "The shape depends on the action and, for a few details, on your dialect: see "
            "the examples.",
            "content": {"application/json": {
                "schema": _ref("PanelReply"),
                "examples": {name: {"$ref": f"#/components/examples/{name}"}
                             for name in reply_examples},
            }},
        },
        "PanelTooLarge": error_body(contract.BODY_TOO_LARGE, "The body is too large."),
        "PanelRateLimited": error_body(
            contract.RATE_LIMITED,
            "Too many requests for this key.",
            {"Retry-After": {"description": "Whole seconds to wait before sending the "
                             "request again (it was not carried out).",
                             "schema": {"type": "integer", "minimum": 1}}},
        ),
        "PanelInternalError": error_body(contract.INTERNAL_ERROR,
                                         "A bug on our side; no detail is given."),
    }


def _operation(op_id: str, summary: str, description: str, post: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "tags": [PANEL_TAG],
        "summary": summary,
        "description": description,
        "operationId": op_id,
        "parameters": [IDEMPOTENCY_HEADER] if post else [*_query_parameters(),
                                                          IDEMPOTENCY_HEADER],
        "responses": {
            "200": {"$ref": "#/components/responses/PanelReply"},
            "413": {"$ref": "#/components/responses/PanelTooLarge"},
            "429": {"$ref": "#/components/responses/PanelRateLimited"},
            "500": {"$ref": "#/components/responses/PanelInternalError"},
        },
    }
    if post:
        op["requestBody"] = {"$ref": "#/components/requestBodies/PanelRequest"}
    else:
        del op["responses"]["413"]
    return op


def panel_openapi(settings: Settings) -> dict[str, Any]:
    """The panel endpoint's part of the document: `paths`, `components` and its tag."""
    variants = _variants()
    errors = _errors(settings)
    request_examples = _request_examples(variants)
    reply_examples = _reply_examples(errors, settings.currency)
    example_refs = {name: {"$ref": f"#/components/examples/{name}"} for name in request_examples}
    media = {"schema": _ref("PanelRequest"), "examples": example_refs}
    get_example = curl({"action": "status", "order": 32}, get=True)
    v1_note = (f"The same endpoint as `{MAIN_PATH}` (its description has the whole guide), "
               "under the path some clients are configured with.")
    paths = {
        MAIN_PATH: {
            "post": _operation(MAIN_OPERATION_ID, "The panel API: every action, one URL",
                               _guide(settings, variants, errors), post=True),
            "get": _operation(
                "panel_api_v2_get", "The panel API with a query string",
                "The same actions with the parameters in the query string:\n\n"
                f"```\n{get_example}\n```\n\nPrefer POST: a key in a URL ends up in "
                "proxy and server logs.",
                post=False),
        },
        "/api/v1": {
            "post": _operation("panel_api_v1_post", "The panel API (v1 path)", v1_note,
                               post=True),
            "get": _operation("panel_api_v1_get", "The panel API (v1 path), query string",
                              v1_note, post=False),
        },
    }
    components = {
        "schemas": {**_request_schemas(variants), **_reply_schemas()},
        "examples": {**request_examples, **reply_examples},
        "requestBodies": {
            "PanelRequest": {
                "required": True,
                "description": "`key`, `action` and the action's parameters, as a JSON "
                "object, a form or a multipart form (the same fields in each). Pick an example "
                "to see each action and each service type of `add`.",
                # JSON first: it is what Swagger UI's "Try it out" can send for this schema.
                "content": {
                    "application/json": media,
                    "application/x-www-form-urlencoded": media,
                    "multipart/form-data": media,
                },
            }
        },
        "responses": _responses(reply_examples),
    }
    tag = {
        "name": PANEL_TAG,
        "description": "The SMM panel API v2 for customers: services, orders, statuses, "
        "refills, cancels and balance through one URL.",
    }
    return {"paths": paths, "components": components, "tag": tag}


INFO_DESCRIPTION = (
    "Order SMM services from this reseller with **the standard SMM-panel API v2**: any client "
    f"written for a panel works unchanged with `https://HOST{MAIN_PATH}` and your API key.\n\n"
    f"Start with **POST {MAIN_PATH}** under *{PANEL_TAG}*: its description walks through every "
    "action with a curl line and the exact reply, the parameters of `add` for each service "
    "type, errors, idempotency and limits; its request body lists an example for every action."
    "\n\nAlso as [ReDoc](/redoc) and as [OpenAPI JSON](/openapi.json)."
)


def _is_panel_path(path: str) -> bool:
    return path.rstrip("/") in PANEL_PATHS


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's document for every other route, with the panel endpoint described by hand."""
    panel = panel_openapi(settings)
    tags = [panel["tag"], *[t for t in app.openapi_tags or [] if t.get("name") != PANEL_TAG]]
    description = INFO_DESCRIPTION + (f"\n\n{app.description}" if app.description else "")
    with warnings.catch_warnings():
        # The panel routes serve GET and POST under one operation id; their entries are
        # replaced below by the hand-made ones, which have an id per method.
        warnings.filterwarnings("ignore", message=r"Duplicate Operation ID panel_")
        doc = _fastapi_openapi(app, description, tags)
    paths = {p: ops for p, ops in doc.get("paths", {}).items() if not _is_panel_path(p)}
    doc["paths"] = {**panel["paths"], **paths}
    components = doc.setdefault("components", {})
    for section, entries in panel["components"].items():
        existing = components.setdefault(section, {})
        clash = set(existing) & set(entries)
        if clash:
            raise RuntimeError(f"OpenAPI components defined twice: {sorted(clash)}")
        existing.update(entries)
    return doc


def _fastapi_openapi(app: FastAPI, description: str, tags: list[dict[str, Any]]) -> dict:
    return get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        summary=app.summary,
        description=description,
        terms_of_service=app.terms_of_service,
        contact=app.contact,
        license_info=app.license_info,
        routes=app.routes,
        webhooks=app.webhooks.routes,
        tags=tags,
        servers=app.servers,
        separate_input_output_schemas=app.separate_input_output_schemas,
        external_docs=app.openapi_external_docs,
    )


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make `app.openapi()` (and so /openapi.json, /docs, /redoc) serve the shaped document."""
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        routes = tuple(map(id, app.routes))
        if cache.get("routes") != routes:
            cache["doc"], cache["routes"] = build_openapi(app, settings), routes
        app.openapi_schema = cache["doc"]
        return cache["doc"]

    app.openapi = openapi  # type: ignore[method-assign]
