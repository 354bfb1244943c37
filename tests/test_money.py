"""Money: exact micro-units, and the strings CONTRACT.md "Money in replies" asks for.

Expected values are computed independently here with Decimal, never copied from the code.
"""

import re
from decimal import ROUND_CEILING, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.money import (
    MICROS,
    MoneyError,
    apply_markup,
    bp_to_percent,
    charge_for,
    parse_micros,
    parse_upstream_micros,
    percent_to_bp,
    render,
)

# "1.25", "0.000001", "10": a plain decimal, never exponent notation.
PLAIN_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def expected_string(micros: int, min_decimals: int) -> str:
    """What CONTRACT.md asks for, written independently: every significant digit (up to 6),
    padded to `min_decimals`, no exponent."""
    value = Decimal(micros) / MICROS
    text = format(value, "f")
    whole, _, frac = text.partition(".")
    frac = frac.rstrip("0").ljust(min_decimals, "0")
    return f"{whole}.{frac}" if frac else whole


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("10", 10 * MICROS),
        ("1.25", 1_250_000),
        ("0.000001", 1),
        ("0.0360", 36_000),
        (" 7.5 ", 7_500_000),
        ("-2.5", -2_500_000),
        ("+3", 3 * MICROS),
        ("1.000000", MICROS),
        (3, 3 * MICROS),
        (Decimal("0.02"), 20_000),
    ],
)
def test_parse_exact_amounts(text: object, micros: int) -> None:
    assert parse_micros(text) == micros  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["0.0000001", "1.1234567", "0.00000050", "-0.0000001"])
def test_parse_refuses_more_than_six_decimals(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_micros(text)


@pytest.mark.parametrize("value", [1.5, 0.1, 10.0, float("nan"), float("inf"), True, False])
def test_parse_refuses_floats_and_booleans(value: object) -> None:
    with pytest.raises(MoneyError):
        parse_micros(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "nan",
        "sNaN",
        "Infinity",
        "-Infinity",
        "inf",
        "",
        "   ",
        "abc",
        "1,5",
        "1.2.3",
        "1e3",
        "1_000",
        "١٠",
    ],
)
def test_parse_refuses_non_numbers(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_micros(text)


def test_money_error_is_a_value_error() -> None:
    # Callers that validate input catch ValueError; MoneyError must be one.
    with pytest.raises(ValueError):
        parse_micros("not money")


def test_parse_refuses_inexact_long_amounts() -> None:
    # 22 integer digits + 7 decimals: not representable in micro-units, must be refused.
    text = "1234567890123456789012.1234567"
    with pytest.raises(MoneyError):
        result = parse_micros(text)
        # If it did not raise, at least it must not have changed the amount.
        assert Decimal(result) / MICROS == Decimal(text)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1.2300000000000000000000000000000000", 1_230_000),  # long, but exact
        ("0000000000000000000000000000000012.5", 12_500_000),
        ("8999999999999.999999", 8_999_999_999_999_999_999),
        ("9000000000000", 9 * 10**18),  # MAX_AMOUNT: the largest balance an operator may set
    ],
)
def test_parse_long_but_exact_amounts(text: str, micros: int) -> None:
    assert parse_micros(text) == micros


@pytest.mark.parametrize(
    "text",
    [
        "1000000000000000",
        "1e15",
        "0.0000000000000000000000000000001",
        "1e-7",
        "9000000000000.000001",  # one micro above MAX_AMOUNT: no balance could hold it
        "-9000000000000.000001",
        "9" * 5000,
    ],
)
def test_parse_refuses_huge_or_too_fine_amounts(text: str) -> None:
    with pytest.raises(MoneyError):
        parse_micros(text)


@given(
    whole=st.integers(min_value=0, max_value=9 * 10**12 - 1),
    frac=st.text(alphabet="0123456789", max_size=12),
    negative=st.booleans(),
)
def test_parse_is_exact_or_refuses(whole: int, frac: str, negative: bool) -> None:
    text = ("-" if negative else "") + (f"{whole}.{frac}" if frac else str(whole))
    scaled = Decimal(text) * MICROS  # at most 27 digits: exact in the default context
    if scaled == scaled.to_integral_value():
        assert parse_micros(text) == int(scaled)
    else:
        with pytest.raises(MoneyError):
            parse_micros(text)


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        ("1.0200", 1_020_000),
        (Decimal("0.0360"), 36_000),
        (1.02, 1_020_000),  # upstream JSON may carry floats: their repr is what was printed
        ("0.0000001", 1),  # below a micro-unit rounds UP: a cost is never understated
        ("0.0000011", 2),
        (" 3 ", 3 * MICROS),
        (5, 5 * MICROS),
    ],
)
def test_upstream_amounts_read_leniently(value: object, micros: int) -> None:
    assert parse_upstream_micros(value) == micros


@pytest.mark.parametrize("value", [None, True, "abc", "", "-1", "NaN", "Infinity", [], {}])
def test_unusable_upstream_amounts_are_none(value: object) -> None:
    assert parse_upstream_micros(value) is None


# --- rendering ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "min_decimals", "text"),
    [
        (10 * MICROS, 2, "10.00"),
        (10 * MICROS, 4, "10.0000"),
        (0, 2, "0.00"),
        (0, 4, "0.0000"),
        (1_275_000, 2, "1.275"),  # every significant digit, beyond the minimum
        (1_275_000, 4, "1.2750"),
        (36_000, 4, "0.0360"),  # a charge
        (1, 2, "0.000001"),
        (1, 4, "0.000001"),
        (123_456_789_012, 2, "123456.789012"),
        (-2_500_000, 2, "-2.50"),
        (-1, 4, "-0.000001"),
        (25 * MICROS, 0, "25"),
    ],
)
def test_render_examples(micros: int, min_decimals: int, text: str) -> None:
    assert render(micros, min_decimals) == text


def test_render_never_uses_exponent_notation() -> None:
    # Values whose Decimal str() would use an exponent (1E-6, 1E+12 …) stay plain.
    for micros in (1, 10, 100, 10**18, 10**12 * MICROS, 7 * 10**20):
        for min_decimals in (0, 2, 4):
            text = render(micros, min_decimals)
            assert PLAIN_DECIMAL.fullmatch(text), text
            assert "e" not in text.lower()


@given(
    micros=st.integers(min_value=-(10**15), max_value=10**15),
    min_decimals=st.sampled_from([2, 4]),
)
def test_render_matches_the_contract(micros: int, min_decimals: int) -> None:
    text = render(micros, min_decimals)
    assert text == expected_string(micros, min_decimals)
    assert PLAIN_DECIMAL.fullmatch(text)
    decimals = text.partition(".")[2]
    assert min_decimals <= len(decimals) <= max(6, min_decimals)


@given(
    micros=st.integers(min_value=-(10**15), max_value=10**15),
    min_decimals=st.sampled_from([0, 2, 4]),
)
def test_render_then_parse_round_trips(micros: int, min_decimals: int) -> None:
    assert parse_micros(render(micros, min_decimals)) == micros


@given(
    amount=st.decimals(
        min_value=Decimal("-1000000000"),
        max_value=Decimal("1000000000"),
        places=6,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_parse_then_render_keeps_the_value(amount: Decimal) -> None:
    text = render(parse_micros(str(amount)))
    assert Decimal(text) == amount


# --- charges and markups --------------------------------------------------------------------


def expected_charge(rate_micros: int, units: int) -> int:
    exact = Decimal(rate_micros) * units / 1000
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


@pytest.mark.parametrize(
    ("rate", "units"),
    [("1.0200", 1000), ("1.0200", 500), ("0.0450", 333), ("0.000001", 1), ("18.9", 7), ("0", 10)],
)
def test_charge_for_examples(rate: str, units: int) -> None:
    rate_micros = parse_micros(rate)
    charge = charge_for(rate_micros, units)
    assert charge == expected_charge(rate_micros, units)
    # Never less than the exact price, and less than one micro-unit above it.
    exact = Decimal(rate) * units / 1000
    assert Decimal(charge) / MICROS >= exact
    assert Decimal(charge) / MICROS - exact < Decimal(1) / MICROS


def test_charge_rounds_up_not_down() -> None:
    # 1 micro per 1000 units, one unit: exactly 0.001 micro → 1 micro, never 0.
    assert charge_for(1, 1) == 1
    assert charge_for(1000, 1) == 1
    assert charge_for(1001, 1) == 2


@given(
    rate=st.integers(min_value=0, max_value=10**9),
    units=st.integers(min_value=0, max_value=10**8),
)
def test_charge_for_is_ceil(rate: int, units: int) -> None:
    assert charge_for(rate, units) == expected_charge(rate, units)


def expected_markup(rate_micros: int, markup_bp: int) -> int:
    exact = Decimal(rate_micros) * (Decimal(1) + Decimal(markup_bp) / 10_000)
    return int(exact.to_integral_value(rounding=ROUND_CEILING))


@pytest.mark.parametrize(
    ("rate", "percent"),
    [("1.0200", "25"), ("0.0045", "25"), ("0.000001", "25"), ("18.9", "0"), ("2", "12.5")],
)
def test_apply_markup_examples(rate: str, percent: str) -> None:
    rate_micros = parse_micros(rate)
    marked = apply_markup(rate_micros, percent_to_bp(percent))
    exact = Decimal(rate) * (1 + Decimal(percent) / 100)
    assert marked == int((exact * MICROS).to_integral_value(rounding=ROUND_CEILING))


@given(
    rate=st.integers(min_value=0, max_value=10**9),
    markup_bp=st.integers(min_value=-10_000, max_value=100_000),
)
def test_apply_markup_is_ceil(rate: int, markup_bp: int) -> None:
    assert apply_markup(rate, markup_bp) == expected_markup(rate, markup_bp)


@given(rate=st.integers(min_value=0, max_value=10**9), markup_bp=st.integers(0, 100_000))
def test_a_positive_markup_never_sells_below_cost(rate: int, markup_bp: int) -> None:
    assert apply_markup(rate, markup_bp) >= rate


@pytest.mark.parametrize(
    ("percent", "bp"),
    [
        ("25", 2500),
        ("2.5", 250),
        ("0.01", 1),
        ("0", 0),
        (40, 4000),
        ("10000", 1_000_000),
        ("-99", -9_900),
    ],
)
def test_percent_to_basis_points(percent: object, bp: int) -> None:
    assert percent_to_bp(percent) == bp  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "percent",
    ["0.001", "abc", "", "NaN", "Infinity", "1e30", "1e2", "٥", "²", "10000.01", "-99.01"],
)
def test_percent_finer_than_a_basis_point_is_refused(percent: str) -> None:
    with pytest.raises(MoneyError):
        percent_to_bp(percent)


@given(bp=st.integers(min_value=-9_900, max_value=1_000_000))
def test_basis_points_round_trip_through_percent(bp: int) -> None:
    text = bp_to_percent(bp)
    assert PLAIN_DECIMAL.fullmatch(text)
    assert Decimal(text) * 100 == bp
    assert percent_to_bp(text) == bp
