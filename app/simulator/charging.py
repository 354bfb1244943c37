"""Link marker `sim:charge=P`: the panel charges P % of the rate it lists for this one order
(a price change between `services` and `add`, a panel that rounds its own way). What it lists
stays as it is, so the gateway's catalog estimate and the upstream's first charge differ."""

import re

_MARKER = re.compile(r"sim:charge=(\d{1,4})")


def charged(amount: int, marked: str) -> int:
    """What the panel takes for an order whose listed price is `amount` micro-units."""
    found = _MARKER.search(marked)
    return amount if found is None else amount * int(found.group(1)) // 100
