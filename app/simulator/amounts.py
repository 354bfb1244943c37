"""The simulated panels' money: integer micro-units, parsed and printed the panels' way.

The simulator's own code, not the gateway's `app.money` (see words.py for why).
"""

from decimal import Decimal, InvalidOperation

MICROS = 1_000_000


def to_micros(text: str) -> int:
    """"1.0200" → 1020000. Exact or refused (ValueError): the simulator's own numbers only."""
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not an amount: {text!r}") from None
    micros = amount * MICROS
    if not amount.is_finite() or amount < 0 or micros != micros.to_integral_value():
        raise ValueError(f"not an amount in micro-units: {text!r}")
    return int(micros)


def padded(micros: int, decimals: int) -> str:
    """Fixed decimals with no rounding loss: what PHP's number_format prints, more if needed."""
    whole, frac = divmod(micros, MICROS)
    digits = f"{frac:06d}".rstrip("0").ljust(decimals, "0")
    return f"{whole}.{digits}" if digits else str(whole)


def unpadded(micros: int) -> str:
    """A DOUBLE column printed as is: "0.03", "0.00004", "2"."""
    return padded(micros, 0)


def charge(rate_micros: int, units: int) -> int:
    """The panel's charge for `units` at a rate per 1000, rounded up to a micro-unit."""
    return -(-rate_micros * units // 1000)
