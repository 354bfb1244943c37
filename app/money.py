"""Money as integer micro-units (1e-6 of the currency). Decimal only at the edges."""

import re
from decimal import Decimal, InvalidOperation

MICROS = 1_000_000
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?|[+-]?\.[0-9]+")
MAX_DIGITS = 13  # a cheap first bound on the digits, before the exact one below
# Every balance must fit in a signed 64-bit integer of micro-units (2**63 - 1 ≈ 9.22e18), with
# room left for the refunds of orders charged before a top-up: no amount and no balance an
# operator sets may exceed 9,000,000,000,000 of the currency.
MAX_AMOUNT = 9 * 10**18
# A rate per 1000 units: 1,000,000 at most, so that a charge (rate × units / 1000) of any
# quantity the catalog allows stays far within a BIGINT too.
MAX_RATE = 10**12
# Markups in basis points: from -99 % (a rule may sell below cost, never for nothing) to 10,000 %.
MIN_MARKUP_BP = -9_900
MAX_MARKUP_BP = 1_000_000
_MICRO = Decimal(1) / MICROS


class MoneyError(ValueError):
    """An amount that cannot be represented exactly in micro-units."""


def parse_micros(value: str | int | Decimal) -> int:
    """Parse a decimal amount ("10", "1.25", 3) into micro-units; refuse anything inexact.

    Floats are refused on purpose: they are not exact, and no caller should hold one.
    """
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError(f"not an exact amount: {value!r}")
    text = str(value).strip()
    # Plain decimal notation only: Decimal would also take "1e3", "1_000" and non-ASCII digits.
    if not isinstance(value, Decimal) and not _PLAIN_DECIMAL.fullmatch(text):
        raise MoneyError(f"not a number: {value!r}")
    try:
        amount = Decimal(text)
    except InvalidOperation as exc:
        raise MoneyError(f"not a number: {value!r}") from exc
    if not amount.is_finite():
        raise MoneyError(f"not a finite amount: {value!r}")
    if amount.adjusted() >= MAX_DIGITS:
        raise MoneyError(f"too large: {value!r} (at most {render(MAX_AMOUNT, 0)})")
    # Integer arithmetic on the digits: exact for any length, no Decimal context rounding.
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    number = int("".join(map(str, digits)) or "0")
    shift = exponent + 6
    if shift >= 0:
        micros = number * 10**shift
    else:
        micros, rest = divmod(number, 10**-shift)
        if rest:
            raise MoneyError(f"more than 6 decimals: {value!r}")
    if micros > MAX_AMOUNT:
        raise MoneyError(f"too large: {value!r} (at most {render(MAX_AMOUNT, 0)})")
    return -micros if sign else micros


def parse_upstream_micros(value: object) -> int | None:
    """Read an upstream amount ("1.02", 1.02, "0.0360") leniently; None when unusable.

    Upstream JSON may carry floats; their shortest repr is what the panel printed, and
    anything below a micro-unit is rounded up so a cost is never understated.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    if not amount.is_finite() or amount < 0:
        return None
    return int((amount * MICROS).to_integral_value(rounding="ROUND_CEILING"))


def render(micros: int, min_decimals: int = 2) -> str:
    """Render micro-units as a decimal string: at least `min_decimals`, every significant digit
    up to 6, never exponent notation."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    digits = f"{frac:06d}".rstrip("0")
    if len(digits) < min_decimals:
        digits = digits.ljust(min_decimals, "0")
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"


def charge_for(rate_micros: int, units: int) -> int:
    """Charge of `units` at a rate per 1000 units: ceil(rate × units / 1000)."""
    return -(-rate_micros * units // 1000)


def apply_markup(rate_micros: int, markup_bp: int) -> int:
    """A rate raised by a markup in basis points, rounded up to the micro-unit."""
    return -(-rate_micros * (10_000 + markup_bp) // 10_000)


def percent_to_bp(percent: str | int | Decimal) -> int:
    """'25' or '2.5' percent → basis points; refuse finer than a basis point, and anything
    outside MIN_MARKUP_BP…MAX_MARKUP_BP (-99 % … 10,000 %)."""
    text = str(percent).strip()
    if isinstance(percent, bool) or (
        not isinstance(percent, Decimal) and not _PLAIN_DECIMAL.fullmatch(text)
    ):
        raise MoneyError(f"not a percentage: {percent!r}")
    try:
        value = Decimal(text) * 100
    except InvalidOperation as exc:
        raise MoneyError(f"not a percentage: {percent!r}") from exc
    if not value.is_finite() or value != value.to_integral_value():
        raise MoneyError(f"not a percentage with at most 2 decimals: {percent!r}")
    if not MIN_MARKUP_BP <= value <= MAX_MARKUP_BP:
        raise MoneyError(
            f"a markup must be from {bp_to_percent(MIN_MARKUP_BP)}% to"
            f" {bp_to_percent(MAX_MARKUP_BP)}%: {percent!r}"
        )
    return int(value)


def bp_to_percent(bp: int) -> str:
    return render(bp * 10_000, 0)
