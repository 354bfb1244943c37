"""The simulator's catalog: a fixed, realistic panel price list covering every service type.

Deterministic on purpose (tests and demos name services by id). Ids are stable and not
contiguous, like a real panel's after years of adding and deleting services.
"""

from dataclasses import dataclass, fields, replace

from app.simulator.amounts import to_micros
from app.simulator.words import DEFAULT, SERVICE_TYPES


@dataclass(frozen=True, slots=True)
class Service:
    id: int
    name: str
    type: str  # canonical (standard) type name, one of contract.SERVICE_TYPES
    category: str
    rate: str  # per 1000 units (per order for package types), as the panel stores it
    min: int
    max: int
    refill: bool = False
    cancel: bool = False
    dripfeed: bool = False  # only ever true on Default services
    desc: str | None = None
    # False: in a disabled category, so missing from `services` yet orderable by id (SmartPanel).
    listed: bool = True
    # A per-user rate (SmartPanel keeps them in a DOUBLE column): printed unpadded, "0.045".
    user_rate: bool = False

    @property
    def rate_micros(self) -> int:
        return to_micros(self.rate)


_IG_FOLLOWERS = "Instagram - Followers [Guaranteed/Refill] - Less Drops \u2b50"

CATALOG: tuple[Service, ...] = (
    # Default
    Service(5, "Instagram Followers [15K]", "Default", _IG_FOLLOWERS, "1.0200", 500, 10_000,
            refill=True, dripfeed=True,
            desc="Start: 0-1 hours\nSpeed: 15K/day\nRefill: 30 days"),
    Service(9, "Instagram Followers - Max 300k - No refill - 30-40k/Day", "Default",
            _IG_FOLLOWERS, "0.0450", 500, 300_000, cancel=True, dripfeed=True, user_rate=True),
    Service(10, "Instagram Followers ( 30 days auto refill ) ( Max 350K ) (Indian Majority )",
            "Default", _IG_FOLLOWERS, "1.2000", 100, 350_000, refill=True, cancel=True),
    Service(14, "Instagram Likes [Real] [Max 50K] [Instant]", "Default", "Instagram - Likes",
            "0.1800", 50, 50_000, cancel=True, dripfeed=True,
            desc="Link: post URL\nNo refill, no drop guarantee"),
    Service(17, "Instagram Reels Views [Max 10M] [Instant]", "Default", "Instagram - Views",
            "0.0045", 100, 10_000_000, dripfeed=True, user_rate=True),
    Service(23, "TikTok Followers [Max 100K] [R30]", "Default", "TikTok - Followers",
            "2.3400", 100, 100_000, refill=True, desc="30 days refill button"),
    Service(24, "TikTok Views [Max 100M] [Speed 1M/Day]", "Default", "TikTok - Views",
            "0.0120", 100, 100_000_000, cancel=True, dripfeed=True),
    Service(31, "YouTube Views [Non Drop] [Lifetime Refill]", "Default", "YouTube - Views",
            "1.5500", 1000, 1_000_000, refill=True, dripfeed=True,
            desc="Retention 1-3 min\nStart: 0-6 hours"),
    Service(33, "YouTube Subscribers [Max 5K] [30 Days Refill]", "Default",
            "YouTube - Subscribers", "18.9000", 50, 5000, refill=True, cancel=True),
    Service(41, "Telegram Channel Members [Max 20K]", "Default", "Telegram - Members",
            "0.9800", 100, 20_000),
    Service(43, "Telegram Post Views [Last 5 Posts]", "Default", "Telegram - Views",
            "0.0250", 100, 500_000, dripfeed=True),
    Service(52, "Twitter/X Followers [Max 10K] [No Refill]", "Default",
            "Twitter / X - Followers", "3.7500", 100, 10_000, cancel=True),
    Service(55, "Twitter/X Likes [HQ] [Max 5K]", "Default", "Twitter / X - Likes",
            "1.1250", 20, 5000, dripfeed=True),
    Service(61, "Facebook Page Likes + Followers [Max 50K]", "Default",
            "Facebook - Page Likes", "2.8800", 100, 50_000, refill=True),
    Service(71, "Spotify Plays [Premium Accounts] [Max 1M]", "Default", "Spotify - Plays",
            "0.6500", 1000, 1_000_000, dripfeed=True),
    # Package: one flat rate per order; min = max = 1
    Service(102, "Instagram Followers Package - 1000 Followers", "Package",
            "Instagram - Packages", "12.5000", 1, 1, desc="One order = 1000 followers"),
    Service(104, "YouTube Starter Package (1K Views + 100 Likes)", "Package",
            "YouTube - Packages", "4.2000", 1, 1),
    # Comments
    Service(120, "Instagram Custom Comments [Max 5K]", "Custom Comments",
            "Instagram - Comments", "9.0000", 5, 5000, desc="One comment per line"),
    Service(122, "YouTube Custom Comments [Real Accounts]", "Custom Comments",
            "YouTube - Comments", "25.0000", 10, 1000, cancel=True),
    Service(130, "TikTok Custom Comments Package - 10 Comments", "Custom Comments Package",
            "TikTok - Comments", "3.5000", 1, 10),
    Service(150, "Instagram Comment Likes [Max 20K]", "Comment Likes", "Instagram - Comments",
            "0.7200", 20, 20_000),
    Service(152, "Instagram Comment Replies [Custom]", "Comment Replies",
            "Instagram - Comments", "11.0000", 5, 1000),
    # Mentions
    Service(140, "Instagram Mentions [Custom Usernames]", "Mentions", "Instagram - Mentions",
            "1.9000", 1000, 100_000),
    Service(141, "Instagram Mentions with Hashtags", "Mentions with Hashtags",
            "Instagram - Mentions", "2.1000", 1000, 50_000),
    Service(142, "Instagram Mentions [Custom List]", "Mentions Custom List",
            "Instagram - Mentions", "3.0000", 10, 10_000, desc="One username per line"),
    Service(143, "Instagram Mentions [Hashtag Scrape]", "Mentions Hashtag",
            "Instagram - Mentions", "1.4400", 1000, 100_000),
    Service(144, "Instagram Mentions [User Followers]", "Mentions User Followers",
            "Instagram - Mentions", "1.4400", 1000, 100_000),
    Service(145, "Instagram Mentions [Media Likers]", "Mentions Media Likers",
            "Instagram - Mentions", "1.5600", 1000, 100_000),
    # Others
    Service(160, "Telegram Poll Votes [Max 50K]", "Poll", "Telegram - Polls", "0.5000",
            100, 50_000),
    Service(161, "Twitter/X Poll Votes [Max 10K]", "Poll", "Twitter / X - Polls", "0.8000",
            100, 10_000, cancel=True),
    Service(170, "Telegram Group Members [Invites from Groups]", "Invites from Groups",
            "Telegram - Members", "1.6000", 500, 50_000),
    Service(180, "Website Traffic [Google Organic] [Keywords]", "SEO",
            "Website Traffic - SEO", "0.9000", 1000, 1_000_000,
            desc="Keywords: one per line"),
    # Subscriptions: min/max bound the per-post quantity the customer asks for
    Service(190, "Instagram Auto Likes [Subscription] [Max 5K per Post]", "Subscriptions",
            "Instagram - Auto Likes", "0.2000", 100, 5000),
    Service(192, "TikTok Auto Views [Subscription]", "Subscriptions", "TikTok - Auto Views",
            "0.0300", 500, 100_000),
    # In a category the panel's owner disabled: not listed, still orderable by its id.
    Service(199, "Instagram Story Views [Old Category]", "Default", "Instagram - Story Views",
            "0.0900", 100, 50_000, listed=False),
)

SERVICES: dict[int, Service] = {s.id: s for s in CATALOG}

# Guard the promises made to tests at import time rather than in every caller.
assert len(SERVICES) == len(CATALOG)
assert {s.type for s in CATALOG} == set(SERVICE_TYPES)
assert all(s.type == DEFAULT or not s.dripfeed for s in CATALOG)

_FIELDS = {f.name for f in fields(Service)}


def edited(service_id: int, changes: dict[str, object], base: Service | None) -> Service:
    """A service with `changes` applied (a new one when there is no `base`); ValueError when
    a field is unknown or a value unusable: the catalog of a test must be what it says."""
    unknown = set(changes) - _FIELDS - {"id"}
    if unknown:
        raise ValueError(f"unknown service fields: {', '.join(sorted(unknown))}")
    if base is None:
        missing = {"name", "type", "category", "rate", "min", "max"} - set(changes)
        if missing:
            raise ValueError(f"a new service needs: {', '.join(sorted(missing))}")
        base = Service(service_id, "", DEFAULT, "", "0", 0, 0)
    service = replace(base, **{k: v for k, v in changes.items() if k != "id"})  # type: ignore[arg-type]
    if service.type not in SERVICE_TYPES:
        raise ValueError(f"unknown service type {service.type!r}")
    if not isinstance(service.min, int) or not isinstance(service.max, int):
        raise ValueError("min and max must be integers")
    if not isinstance(service.rate, str):
        raise ValueError("rate must be a decimal string, as the panel stores it")
    to_micros(service.rate)  # raises ValueError for an unusable rate
    return service
