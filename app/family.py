"""The upstream's family, and the rules that exist because of that family's code.

SmartPanel (what smmmix runs) takes orders differently from the standard (Perfect Panel)
family: CONTRACT.md, "Seen when the real SmartPanel 4.0 code answered". Every rule that exists
because of SmartPanel is here, and applies only when the upstream is of that family.
"""

from dataclasses import dataclass
from typing import Literal

Family = Literal["smartpanel", "standard"]
FAMILIES: tuple[Family, ...] = ("smartpanel", "standard")

# SmartPanel's `orders.link` is varchar(191) with strict SQL mode off: it cuts longer links.
SMARTPANEL_MAX_LINK = 191
# Beyond this a link is a typo or an attack, whichever the upstream.
ANY_MAX_LINK = 2048
# SmartPanel joins comment lines with " | " and splits on it again.
SMARTPANEL_COMMENT_SEPARATOR = " | "


@dataclass(frozen=True)
class UpstreamRules:
    """What the upstream takes, as far as validating an `add` needs to know."""

    family: Family
    refuse_tags: bool  # the upstream decodes twice and strips tags: `<3` cannot arrive
    max_link_length: int

    @property
    def takes_subscriptions(self) -> bool:
        """SmartPanel's API has no subscription branch: it would store a plain order."""
        return self.family == "standard"

    @property
    def quantity_for_every_type(self) -> bool:
        """SmartPanel sends every type but custom_comments through its default branch, which
        needs a `quantity`: the min for packages, the number of lines for the list types."""
        return self.family == "smartpanel"

    @property
    def dripfeed_bounds_on_total(self) -> bool:
        """SmartPanel checks runs × quantity against the bounds, not one run."""
        return self.family == "smartpanel"

    @property
    def comment_separator(self) -> str | None:
        """A text inside a comment the upstream would split it on."""
        return SMARTPANEL_COMMENT_SEPARATOR if self.family == "smartpanel" else None


def rules_for(
    family: Family, *, double_decode: bool, max_link_length: int | None = None
) -> UpstreamRules:
    default_link = SMARTPANEL_MAX_LINK if family == "smartpanel" else ANY_MAX_LINK
    return UpstreamRules(family, double_decode, min(max_link_length or default_link, ANY_MAX_LINK))


def detect_family(items: list[object]) -> Family | None:
    """The family a `services` reply is shaped like: SmartPanel prints every field as a string,
    types lowercase with "_", and no refill/cancel flags; None when there is nothing to read."""
    votes = {"smartpanel": 0, "standard": 0}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            continue
        raw_type = item["type"]
        smartpanel = (
            isinstance(item.get("service"), str)
            and "refill" not in item
            and "cancel" not in item
            and raw_type == raw_type.lower()
        )
        votes["smartpanel" if smartpanel else "standard"] += 1
    if not any(votes.values()):
        return None
    return "smartpanel" if votes["smartpanel"] >= votes["standard"] else "standard"
