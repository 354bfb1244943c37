"""The simulated panels' own vocabulary: status strings, service types, standard error texts.

Written out here rather than borrowed from the gateway (`app.contract`): a word both sides got
wrong in the same way is a mistake no test could see.
"""

# Order and refill statuses as the panels print them.
PENDING = "Pending"
IN_PROGRESS = "In progress"
COMPLETED = "Completed"
PARTIAL = "Partial"
CANCELED = "Canceled"
ACTIVE = "Active"

# Service types, as the standard family names them; SmartPanel writes them lowercase with "_".
DEFAULT = "Default"
PACKAGE = "Package"
CUSTOM_COMMENTS = "Custom Comments"
CUSTOM_COMMENTS_PACKAGE = "Custom Comments Package"
SUBSCRIPTIONS = "Subscriptions"
SERVICE_TYPES = (
    DEFAULT,
    PACKAGE,
    CUSTOM_COMMENTS,
    CUSTOM_COMMENTS_PACKAGE,
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
    SUBSCRIPTIONS,
)
# Charged their flat rate per order, not per 1000 units.
FLAT_RATE_TYPES = frozenset({PACKAGE, CUSTOM_COMMENTS_PACKAGE})


def smartpanel_type(service_type: str) -> str:
    return service_type.lower().replace(" ", "_")


# The standard family's (Perfect Panel's) error texts.
STD_INVALID_KEY = "Invalid API key"
STD_INCORRECT_REQUEST = "Incorrect request"
STD_INCORRECT_SERVICE = "Incorrect service ID"
STD_BAD_LINK = "Bad link"
STD_NOT_ENOUGH_FUNDS = "Not enough funds on balance"
STD_INCORRECT_ORDER = "Incorrect order ID"
STD_INCORRECT_REFILL = "Incorrect refill ID"
STD_NOT_REFILLABLE = "Order not eligible for refill"


def std_quantity_low(minimum: int) -> str:
    return f"Quantity less than minimal {minimum}"


def std_quantity_high(maximum: int) -> str:
    return f"Quantity more than maximum {maximum}"


def std_missing(name: str) -> str:
    return f"Missing parameter: {name}"
